"""Drift cost: seconds and peak memory to profile a reference and drift-check a window (CPU, numpy).

Data: real ACS employment columns (Massachusetts; ``mlsd_jax.data.acs``) **resampled with
replacement** (seeded) to ``--rows`` rows (default 1,000,000): the reference from the 2015 file,
the window from the 2018 rows of the analysis file.  15 columns: 10 numeric -- AGEP, the model's
predicted_probability and the ACS codes of SCHL, ESP, CIT, MIG, MIL, DIS, DEAR, DEYE read as
numbers (ties make the sort-based KS / Wasserstein no cheaper) -- and 5 categorical strings:
RELP, MAR, ANC, RAC1P, DREM.

Phases, each timed ``--repeats`` times (median and min-max reported):

* ``profile_fit``: :meth:`Profile.fit` on the reference (quantiles, histograms, 2,000-value
  samples, top-k counts);
* ``drift_check``: :func:`mlsd_jax.monitoring.drift.check` of the whole window against the
  profile (KS + Wasserstein + PSI for 10 numeric, chi-squared + JS + PSI for 5 categorical, BH);
* ``pca_fit`` / ``pca_check``: the multivariate PCA-reconstruction check fitted on the reference
  (thresholds from its 5,000-row chunks) and applied to the window.

Peak RSS is the process's high-water mark (``ru_maxrss``) after each phase, so it includes the
data already in memory (``data`` row: after building both tables).

    python benchmarks/drift_cost.py            # 1M rows -> benchmarks/results/drift_cost.{json,md}
    python benchmarks/drift_cost.py --quick    # 50k rows, one repeat -> drift_cost_quick.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlsd_jax.data.acs import load_acs_employment  # noqa: E402
from mlsd_jax.monitoring import PCAReconstruction, Profile, check  # noqa: E402

import scipy.stats  # noqa: E402,F401  (the drift tests import it lazily; keep the import out of the timings)

NUMERIC = ["AGEP", "predicted_probability", "SCHL", "ESP", "CIT", "MIG", "MIL", "DIS", "DEAR", "DEYE"]
CATEGORICAL = ["RELP", "MAR", "ANC", "RAC1P", "DREM"]


def _table(cols: dict, rows: np.ndarray) -> dict:
    out = {}
    for c in NUMERIC:
        v = cols[c][rows]
        out[c] = v.astype(np.float64) if v.dtype.kind != "O" else v.astype(str).astype(np.float64)
    for c in CATEGORICAL:
        out[c] = np.asarray(cols[c][rows], dtype=object)
    return out


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(fn, repeats: int):
    times, cpu, out = [], [], None
    for _ in range(repeats):
        load0 = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return out, {"median_s": float(np.median(times)), "min_s": float(min(times)),
                 "max_s": float(max(times)), "runs_s": times, "cpu_s_median": float(np.median(cpu)),
                 "load_avg_1min_before_last": load0,
                 "peak_rss_mib": _peak_rss_mib()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="50,000 rows, one repeat")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.repeats = 50_000, 1
    name = "drift_cost_quick" if args.quick else "drift_cost"
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    ref_all = load_acs_employment("reference")
    ana_all = load_acs_employment("analysis", with_target=False)
    rng = np.random.default_rng(0)
    ref_rows = rng.integers(0, len(ref_all["AGEP"]), args.rows)
    rows_2018 = np.flatnonzero(ana_all["year"] == 2018)
    win_rows = rows_2018[rng.integers(0, rows_2018.size, args.rows)]
    ref, win = _table(ref_all, ref_rows), _table(ana_all, win_rows)
    del ref_all, ana_all
    phases = {"data": {"peak_rss_mib": _peak_rss_mib()}}
    kinds = {**{c: "numeric" for c in NUMERIC}, **{c: "categorical" for c in CATEGORICAL}}

    prof, phases["profile_fit"] = _timed(lambda: Profile.fit(ref, kinds=kinds, seed=0), args.repeats)
    rep, phases["drift_check"] = _timed(lambda: check(prof, win, alpha=0.05, correction="bh"), args.repeats)
    pca, phases["pca_fit"] = _timed(lambda: PCAReconstruction.fit(ref, NUMERIC, CATEGORICAL, chunk_size=5000),
                                    args.repeats)
    pres, phases["pca_check"] = _timed(lambda: pca.check(win), args.repeats)

    wall = time.perf_counter() - t_start
    results = {
        "command": "python benchmarks/drift_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": args.rows, "repeats": args.repeats,
        "columns": {"numeric": NUMERIC, "categorical": CATEGORICAL},
        "data": ("ACS employment (MA) resampled with replacement (seed 0): reference from 2015, "
                 f"window from the 2018 analysis rows, {args.rows:,} rows each"),
        "host": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                 "numpy": np.__version__, "platform": platform.platform()},
        "load_avg_start": list(load_start), "load_avg_end": list(os.getloadavg()),
        "phases": phases,
        "profile_json_bytes": len(prof.to_json()),
        "drifted": rep.drifted, "pca": {**pres, "n_components": len(pca.components)},
        "wall_s": wall,
    }
    ph = phases
    lines = [
        f"# Drift cost: profile + drift check of {args.rows:,} rows x 15 columns (CPU, numpy)", "",
        f"Command: `{results['command'].strip()}`  ",
        f"Host: {results['host']['cpu']}, {results['host']['cores']} cores (shared with other jobs), "
        f"Python {results['host']['python']}, numpy {np.__version__}; load average (1/5/15 min) "
        f"{', '.join(f'{x:.2f}' for x in load_start)} at start, "
        f"{', '.join(f'{x:.2f}' for x in results['load_avg_end'])} at end; wall {wall:.0f} s.", "",
        f"**Data**: {results['data']}. Numeric (10): {', '.join(NUMERIC)} (ACS codes read as numbers "
        f"past AGEP and predicted_probability). Categorical (5): {', '.join(CATEGORICAL)}.", "",
        f"Median of {args.repeats} run(s) (min-max) of wall seconds, and the median process CPU "
        "seconds (all threads; on a shared host wall time also counts waiting for a core). Peak RSS: the process high-water mark after the "
        "phase (it includes the two tables in memory, row `data`).", "",
        "| phase | wall s | min-max | CPU s | peak RSS MiB |", "|---|---|---|---|---|",
        f"| data (both tables built) | – | – | – | {ph['data']['peak_rss_mib']:.0f} |",
    ]
    for k in ("profile_fit", "drift_check", "pca_fit", "pca_check"):
        p = ph[k]
        lines.append(f"| {k} | {p['median_s']:.2f} | {p['min_s']:.2f}–{p['max_s']:.2f} | {p['cpu_s_median']:.2f} | "
                     f"{p['peak_rss_mib']:.0f} |")
    lines += ["", f"Profile JSON: {results['profile_json_bytes']:,} bytes. Window vs reference "
              f"(BH, alpha 0.05): {len(rep.drifted)} of 15 columns flagged "
              f"({', '.join(rep.drifted) or 'none'}); at this size KS / chi-squared flag small "
              "differences, so read the distances (PSI, normalised Wasserstein, JS) for size. "
              f"PCA reconstruction error {pres['error']:.4f} vs band "
              f"[{pres['lower']:.4f}, {pres['upper']:.4f}] ({len(pca.components)} components; "
              f"{'outside: drift' if pres['drift'] else 'inside: no drift'}).", ""]
    md = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {out / name}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
