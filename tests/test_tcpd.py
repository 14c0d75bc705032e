"""TCPD series from the river wheel (mlsd_jax.data.tcpd) and the change detectors on them."""
import shutil

import numpy as np
import pytest

from mlsd_jax.data.fetch import fetch_packaged
from mlsd_jax.data.tcpd import TCPD_SERIES, load_tcpd, tcpd_files
from mlsd_jax.monitoring.changepoint import cusum, f_measure, windowed_ks

# TCPD's published lengths (dataset_nobs of TCPDBench's summaries) and annotator counts.
LENGTHS = {"airline_passengers": 468, "apple": 622, "bitcoin": 822, "brent_crude_oil": 500,
           "occupancy": 509, "run_log": 376, "uk_coal_employment": 105}


def test_loader_reads_every_series_with_its_annotations():
    assert sorted(TCPD_SERIES) == sorted(LENGTHS)
    for name in TCPD_SERIES:
        s = load_tcpd(name)
        assert s.n_obs == LENGTHS[name], name
        assert s.values.shape == (s.n_obs, len(s.columns)) and np.isfinite(s.values).all()
        assert len(s.annotations) == 5, name
        cps = s.change_points
        assert cps and all(0 <= t < s.n_obs for t in cps)
    apple = load_tcpd("apple")  # TCPD's subsampling: the day after the first row, every 3rd day
    assert apple.columns == ("Close", "Volume")
    assert apple.time[0] == "1996-12-13" and apple.annotations["9"] == [53, 90, 197, 276, 319, 403, 463, 535]
    brent = load_tcpd("brent_crude_oil")
    assert brent.time[0].endswith("2000") and brent.tcpd_name == "brent_spot"


def test_bad_files_give_clear_errors(tmp_path):
    csv_spec, py_spec = tcpd_files("uk_coal_employment")
    good_csv, good_py = fetch_packaged(csv_spec), fetch_packaged(py_spec)
    bad = tmp_path / "coal.csv"
    lines = good_csv.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].split(",")[0] + ",n/a"] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"row 2, column 'Employment': expected a number"):
        load_tcpd("uk_coal_employment", csv_path=bad)
    bad.write_text("Year,Workers\n1913,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Employment'\]"):
        load_tcpd("uk_coal_employment", csv_path=bad)
    bad.write_text("\n".join(lines[:50]) + "\n")
    with pytest.raises(ValueError, match="expected 105 rows"):
        load_tcpd("uk_coal_employment", csv_path=bad)
    ann = tmp_path / "coal.py"
    ann.write_text(good_py.read_text().replace("[15, 28, 45, 60, 68, 80]", "[15, 28, 450]"))
    with pytest.raises(ValueError, match="fall outside the series' 105 observations"):
        load_tcpd("uk_coal_employment", annotations_path=ann)
    shutil.copy(good_py, ann)
    ann.write_text(ann.read_text().replace("annotations=", "notes="))
    with pytest.raises(ValueError, match="no 'annotations=' keyword"):
        load_tcpd("uk_coal_employment", annotations_path=ann)
    with pytest.raises(ValueError, match="unknown TCPD series"):
        load_tcpd("nile")


def test_cusum_fires_after_the_first_annotated_change_and_not_before():
    s = load_tcpd("occupancy")  # V3: light; annotators mark the lights going on at 52/53
    x = s.values[:, s.columns.index("V3")]
    first = min(t for t in s.change_points if t >= 30)  # after the 30-point reference
    assert first in (52, 53)
    res = cusum(x, ref_size=30, k=0.5, h=8.0)
    assert res["alarms"][0] >= first and res["alarms"][0] - first <= 5
    assert res["onsets"][0] <= res["alarms"][0] and abs(res["onsets"][0] - first) <= 5
    # The same detector on the quiet stretch before the change raises nothing.
    assert cusum(x[:first], ref_size=30)["alarms"] == []
    assert windowed_ks(x[:first], ref_size=20, window=20)["alarms"] == []


def test_f_measure_matches_tcpd_reference_values():
    # The doctest values of TCPDBench's analysis/scripts/metrics.py.
    assert f_measure({1: [10, 20], 2: [11, 20], 3: [10], 4: [0, 5]}, [10, 20])["f1"] == 1.0
    assert f_measure({1: [], 2: [10], 3: [50]}, [10])["f1"] == pytest.approx(0.9090909090909091)
    assert f_measure({1: [], 2: [10], 3: [50]}, [])["f1"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="annotations is empty"):
        f_measure({}, [1])
