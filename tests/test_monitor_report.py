"""`experiments.monitor` end to end on a real prediction log, and its HTML report opened in a real
headless browser (Debian's chromium).

The log is written by the server's PredictionLog class: a tabular model trained for a few steps on
ACS 2015 (tests/test_reference_profile.py's run) scores 10,000 rows of 2015 and then 10,000 rows
of 2018 in requests of 250 rows; labels arrive for the 2018 rows only.
"""
import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from experiments import monitor as M
from mlsd_jax.data.acs import load_acs_employment
from mlsd_jax.export.bundle import load_bundle
from mlsd_jax.monitoring.profile import Profile
from mlsd_jax.monitoring.windows import monitor, records_frame
from mlsd_jax.serving.config import LogConfig
from mlsd_jax.serving.predlog import PredictionLog, read_records
from tests.test_reference_profile import acs_run, acs_serving_rows

N = 10_000
BATCH = 250


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(model version folder, log dir, labels file) of 2015 then 2018 traffic."""
    _, results = acs_run()
    model = Path(results["paths"]["export"])
    bundle = load_bundle(model)
    names = list(bundle.signatures["serving_default"].inputs)
    base = tmp_path_factory.mktemp("served")
    log = PredictionLog(LogConfig(dir=str(base / "log")), worker=0)
    ref = load_acs_employment("reference")
    ana = load_acs_employment("analysis")
    parts = [("reference", np.sort(np.random.default_rng(1).choice(len(ref["id"]), N, replace=False)),
              ref["employed"]),
             ("analysis", np.flatnonzero(ana["year"] == 2018)[:N], ana["employed"])]
    labels, k = [], 0
    for split, rows, y in parts:
        cols = acs_serving_rows(split, rows, names)
        for i in range(0, N, BATCH):
            x = {n: v[i:i + BATCH] for n, v in cols.items()}
            out = bundle.predict(x)
            rid = f"req-{k}"
            k += 1
            log.write(rid, "acs", 1, "serving_default", "predict", 200, 2.0 + (k % 7) * 0.1, None,
                      {n: v.tolist() for n, v in x.items()},
                      {n: np.asarray(v).tolist() for n, v in out.items()})
            if split == "analysis":  # labels arrive later, for the 2018 traffic only
                labels += [(rid, int(v), j) for j, v in enumerate(y[rows[i:i + BATCH]])]
    log.close()
    label_file = base / "labels.csv"
    with open(label_file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request_id", "label", "row"])
        w.writerows(labels)
    return model, base / "log", label_file


@pytest.fixture(scope="module")
def report(served, tmp_path_factory):
    model, log_dir, labels = served
    out = tmp_path_factory.mktemp("report")
    summary = M.run({"log_dir": str(log_dir), "model": str(model), "labels": str(labels),
                     "out": str(out), "progress": False,
                     "alerts": [{"name": "feature_drift", "metric": "drift.n_drifted", "op": ">=",
                                 "threshold": 3, "windows": 1, "cooldown_windows": 0},
                                {"name": "slow", "metric": "latency.p99", "op": ">",
                                 "threshold": 1000}]})
    return summary, out


def test_summary_finds_the_2018_drift_and_quality(report):
    summary, out = report
    assert summary["windows"] == 4 and summary["rows"] == 2 * N
    assert summary["requests"] == 2 * N // BATCH
    ws = summary["window_records"]
    # 2015 traffic against the 2015 profile: no drift; 2018: drift, RELP and AGEP among it.
    assert [w["drift"]["n_drifted"] for w in ws[:2]] == [0, 0]
    assert all(w["drift"]["n_drifted"] >= 3 for w in ws[2:])
    assert {"RELP", "AGEP"} <= set(ws[2]["drift"]["drifted"])
    assert summary["top_features"][0] in ("RELP", "AGEP")
    # Labels only for 2018: realised quality there, CBPE estimates everywhere.
    assert [w["quality"]["n_labelled"] for w in ws] == [0, 0, 5000, 5000]
    assert ws[0]["quality"]["realised"] is None
    assert all(0 <= w["quality"]["realised"]["roc_auc"] <= 1 for w in ws[2:])
    assert all(w["quality"]["estimated"]["roc_auc"] is not None for w in ws)
    # Alerts: the drift rule fires on the 2018 windows only, latency never.
    fired = [(a["rule"], a["window"]["index"]) for a in summary["alerts"]["list"]]
    assert fired == [("feature_drift", 2), ("feature_drift", 3)]
    assert len((out / "alerts.jsonl").read_text().splitlines()) == 2
    assert 'mlsd_monitor_alerts_total{rule="feature_drift"' in (out / "metrics.prom").read_text()
    assert (out / "summary.json").exists()


def test_window_by_window_equals_one_monitor_call(served):
    model, log_dir, label_file = served
    frame = records_frame(read_records(log_dir))
    profile = Profile.from_json((model / "assets.extra" / "profile.json").read_text())
    labels = M.read_labels(label_file)
    span = frame.requests["ts"][-1] - frame.requests["ts"][0]
    for kw in (dict(by="count", size=3100),  # boundaries cut requests of 250 rows
               dict(by="time", size=span / 40)):  # some windows without requests
        one = monitor(frame, profile, labels=labels, min_rows=1, **kw).to_dict()
        assert M.monitor_windows(frame, profile, labels=labels, min_rows=1, **kw).to_dict() == one
    assert any(w["n_requests"] == 0 for w in one["windows"])


def test_missing_log_dir_and_profile_name_the_setting(served, tmp_path):
    model, log_dir, _ = served
    with pytest.raises(FileNotFoundError, match="log_dir="):
        M.run({"log_dir": str(tmp_path / "nope"), "model": str(model), "out": str(tmp_path)})
    bare = tmp_path / "model"
    shutil.copytree(model, bare)
    (bare / "assets.extra" / "profile.json").unlink()
    with pytest.raises(FileNotFoundError, match="no reference profile"):
        M.run({"log_dir": str(log_dir), "model": str(bare), "out": str(tmp_path)})


def test_report_renders_its_plots_in_headless_chromium(report):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("the chromium binary is not installed (.ci/run installs Debian's chromium)")
    _, out = report
    page = out / "report.html"
    text = page.read_text()
    # Self-contained: nothing fetched (the SVG namespace is a name, not a request).
    assert "https://" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    expected = int(re.search(r"data-plots='(\d+)'", text).group(1))
    assert expected >= 10  # 8 feature distributions, drift, PSI, quality, latency, errors, prediction
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body is not None, dom.stdout[:500]
    rendered = re.search(r'data-rendered="(\d+)"', body.group(0))
    assert rendered is not None, f"the page's load script did not run: {body.group(0)}"
    assert int(rendered.group(1)) == expected


def test_config_file_typechecks_and_its_rules_load():
    from hydra import compose, initialize_config_dir

    from mlsd_jax.experiment import config_dir, typed
    from mlsd_jax.monitoring.alerts import AlertManager

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("monitor", overrides=["log_dir=x", "model=y", "window.size=2000"])
    conf = typed(M.MonitorConfig, cfg)
    assert conf.window.size == 2000 and conf.window.by == "count"
    assert {r.name for r in AlertManager(conf.alerts).rules} >= {"feature_drift", "error_rate"}
