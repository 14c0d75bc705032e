"""Change-point detection on the annotated TCPD series: detection delay, false alarms and F1.

Data: the seven TCPD series river ships (``mlsd_jax.data.tcpd``; annotations of five annotators
each).  Detectors (``mlsd_jax.monitoring.changepoint``), settings fixed in advance and the same for
every series (no tuning on the annotations: TCPD's "default" protocol), each run on every
column of a series (multi-column series: the union of the columns' alarms) and on two views:

* ``level``: the values as they are;
* ``diff``: the first differences (a change in trend or volatility becomes a level change;
  an alarm at difference ``i`` is reported at series index ``i + 1``);

and the detectors:

* ``cusum``: two-sided CUSUM on the values standardised by the reference window (30 points),
  k = 0.5, h = 8, restarted after each alarm; scored at the alarm time and, as ``cusum-onset``,
  at its onset estimate (the index after the alarming sum's last zero);
* ``ks``: KS test of the last 30 points against the 30-point reference window, alarm at
  p < 0.001 (our ``drift.ks_2samp``), restarted after each alarm.

Scores per series, margin 5 as TCPD:

* **F1 / precision / recall** of van den Burg & Williams (2020) (``changepoint.f_measure``);
* **detection delay**: annotated change points (union over annotators; points closer than the
  margin merged into one event at the earliest) are events; an event's delay is the first alarm
  in ``[event - margin, next event - margin)`` minus the event (so -5 .. ); none there: missed;
  ``within margin``: the events whose delay is at most the margin (what TCPD credits);
  Events inside the first reference window (index < 30) cannot be detected and are counted as
  ``in_warmup``;
* **false alarms**: alarms not matched to an annotated point within the margin (TCPD's
  ``|X| - |TP|``), and those before the first annotated change point.

    python benchmarks/changepoints.py           # -> benchmarks/results/changepoints.{json,md}
    python benchmarks/changepoints.py --quick   # three series -> changepoints_quick.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _harness import cpu_model  # noqa: E402  (benchmarks/, the script's folder)

from mlsd_jax.data.tcpd import TCPD_SERIES, load_tcpd  # noqa: E402
from mlsd_jax.monitoring.changepoint import cusum, f_measure, true_positives, windowed_ks  # noqa: E402

MARGIN = 5
REF = 30
SETTINGS = {"cusum": dict(ref_size=REF, k=0.5, h=8.0), "ks": dict(ref_size=REF, window=30, alpha=0.001)}
QUICK_SERIES = ("occupancy", "run_log", "uk_coal_employment")


def detect(values: np.ndarray, view: str) -> dict:
    """Alarms of each detector over all columns of ``values`` (n, d): {name: sorted indices}."""
    out = {"cusum": set(), "cusum-onset": set(), "ks": set()}
    for j in range(values.shape[1]):
        x = values[:, j]
        off = 0
        if view == "diff":
            x, off = np.diff(x), 1
        c = cusum(x, **SETTINGS["cusum"])
        out["cusum"].update(a + off for a in c["alarms"])
        out["cusum-onset"].update(o + off for o in c["onsets"])
        out["ks"].update(a + off for a in windowed_ks(x, **SETTINGS["ks"])["alarms"])
    return {k: sorted(v) for k, v in out.items()}


def events(cps: list, margin: int = MARGIN) -> list:
    """Annotated points merged into events: a point within ``margin`` of the previous one joins it."""
    ev = []
    for t in sorted(cps):
        if ev and t - ev[-1][-1] <= margin:
            ev[-1].append(t)
        else:
            ev.append([t])
    return [e[0] for e in ev]


def score(series, alarms: list) -> dict:
    cps = series.change_points
    ev = events(cps)
    n = series.n_obs
    delays, missed, warm = [], [], []
    for i, e in enumerate(ev):
        if e < REF:
            warm.append(e)
            continue
        hi = ev[i + 1] - MARGIN if i + 1 < len(ev) else n
        hit = [a for a in alarms if e - MARGIN <= a < hi]
        if hit:
            delays.append(hit[0] - e)
        else:
            missed.append(e)
    tp = true_positives(set(cps), set(alarms), MARGIN)
    matched_alarms = len(alarms) - len(set(alarms) - _matched(cps, alarms))
    f = f_measure(series.annotations, alarms, MARGIN)
    return {"n_alarms": len(alarms), "alarms": alarms,
            "events": ev, "n_events": len(ev), "detected": len(delays), "missed": missed,
            "detected_within_margin": sum(abs(d) <= MARGIN for d in delays),
            "in_warmup": warm, "delays": delays,
            "median_delay": float(np.median(delays)) if delays else None,
            "false_alarms": len(alarms) - matched_alarms,
            "false_alarms_before_first_cp": sum(a < cps[0] - MARGIN for a in alarms) if cps else len(alarms),
            "tp_points": len(tp), **{k: round(v, 4) for k, v in f.items()}}


def _num(v) -> str:
    return "–" if v is None else f"{v:.0f}"


def _matched(cps, alarms) -> set:
    """Alarms used by TCPD's greedy matching of annotated points (union) within the margin."""
    left = set(alarms)
    used = set()
    for tau in sorted(set(cps)):
        close = sorted((abs(tau - x), x) for x in left if abs(tau - x) <= MARGIN)
        if close:
            used.add(close[0][1])
            left.remove(close[0][1])
    return used


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_SERIES)}")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    name = "changepoints_quick" if args.quick else "changepoints"
    names = QUICK_SERIES if args.quick else TCPD_SERIES
    t0, load0 = time.perf_counter(), os.getloadavg()
    rows = {}
    for s_name in names:
        s = load_tcpd(s_name)
        rows[s_name] = {"tcpd_name": s.tcpd_name, "n_obs": s.n_obs, "columns": list(s.columns),
                        "annotations": s.annotations, "change_points": s.change_points,
                        "trivial_zero_alarms": f_measure(s.annotations, [], MARGIN), "runs": {}}
        for view in ("level", "diff"):
            for det, alarms in detect(s.values, view).items():
                rows[s_name]["runs"][f"{det}/{view}"] = score(s, alarms)
    configs = list(next(iter(rows.values()))["runs"])
    summary = {}
    for cfg in configs:
        rs = [r["runs"][cfg] for r in rows.values()]
        d = [x for r in rs for x in r["delays"]]
        summary[cfg] = {"mean_f1": float(np.mean([r["f1"] for r in rs])),
                        "events": sum(r["n_events"] - len(r["in_warmup"]) for r in rs),
                        "detected": sum(r["detected"] for r in rs),
                        "within_margin": sum(r["detected_within_margin"] for r in rs),
                        "median_delay": float(np.median(d)) if d else None,
                        "alarms": sum(r["n_alarms"] for r in rs),
                        "false_alarms": sum(r["false_alarms"] for r in rs)}
    summary["zero alarms (baseline)"] = {
        "mean_f1": float(np.mean([r["trivial_zero_alarms"]["f1"] for r in rows.values()]))}
    wall = time.perf_counter() - t0
    results = {
        "command": "python benchmarks/changepoints.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": "TCPD series from the river==0.26.1 wheel (mlsd_jax.data.tcpd), 5 annotators each",
        "margin": MARGIN, "settings": SETTINGS, "series": rows, "summary": summary,
        "host": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                 "numpy": np.__version__},
        "load_avg_start": list(load0), "load_avg_end": list(os.getloadavg()), "wall_s": wall,
    }
    L = [f"# Change-point detection on the annotated TCPD series (margin {MARGIN})", "",
         f"Command: `{results['command'].strip()}`  ",
         f"Host: {results['host']['cpu']}, {results['host']['cores']} cores (shared), Python "
         f"{results['host']['python']}, numpy {np.__version__}; load average (1/5/15 min) "
         f"{', '.join(f'{x:.2f}' for x in load0)} at start; wall {wall:.1f} s.", "",
         "Detectors (`mlsd_jax.monitoring.changepoint`), one setting for all series, never tuned on "
         f"the annotations: CUSUM (reference {REF} points, k 0.5, h 8, restart after each alarm; "
         "`cusum-onset` scores its onset estimate instead of the alarm time) and a windowed KS test "
         f"(last 30 points vs the {REF}-point reference, p < 0.001). `level`: the values; `diff`: first "
         "differences. Multi-column series: union of the columns' alarms. F1 / precision / recall as "
         "van den Burg & Williams (2020) (index 0 counts for everyone; recall averaged over the 5 "
         "annotators). Delay: first alarm from 5 points before an annotated change (merged events) "
         "to 5 before the next; false alarms: alarms matching no annotated point within 5.", "",
         "## Summary over the series", "",
         "| detector/view | mean F1 | events detected (delay <= 5) | median delay | alarms | false alarms |",
         "|---|---|---|---|---|---|"]
    for cfg, v in summary.items():
        if "events" in v:
            L.append(f"| {cfg} | {v['mean_f1']:.3f} | {v['detected']}/{v['events']} ({v['within_margin']}) | "
                     f"{_num(v['median_delay'])} | "
                     f"{v['alarms']} | {v['false_alarms']} |")
        else:
            L.append(f"| {cfg} | {v['mean_f1']:.3f} | – | – | 0 | 0 |")
    base = summary["zero alarms (baseline)"]["mean_f1"]
    ranked = sorted((c for c in summary if "events" in summary[c]), key=lambda c: -summary[c]["mean_f1"])
    best = ranked[0]
    f1s = {c: summary[c]["mean_f1"] for c in ranked}
    beat = [c for c in ranked if f1s[c] > base]
    L += ["", f"Reading: TCPD's F1 credits index 0 to every method, so raising no alarm at all scores "
          f"{base:.3f} on these series; {', '.join(f'{c} ({f1s[c]:.3f})' for c in beat) or 'no detector'} "
          f"beat{'s' if len(beat) == 1 else ''} that. Best: {best}. On the "
          "`level` view the detectors answer a different question from the annotators -- prices, passenger "
          "counts and a cumulative distance trend, so a fixed reference is soon left behind and every restart "
          "fires again (most alarms are false); differencing turns trend and volatility changes into level "
          "changes and removes most false alarms, at the price of missing the smaller annotated changes. "
          f"Events inside the first {REF}-point reference cannot be detected by construction.", ""]
    L += ["", "## Per series", "",
          "| series (TCPD) | n | annotated (union) | detector/view | F1 | P | R | detected | delays | "
          "alarms | false alarms (before 1st CP) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s_name, r in rows.items():
        for cfg, v in r["runs"].items():
            L.append(f"| {s_name} ({r['tcpd_name']}) | {r['n_obs']} | {len(r['change_points'])} | {cfg} | "
                     f"{v['f1']:.3f} | {v['precision']:.3f} | {v['recall']:.3f} | "
                     f"{v['detected']}/{v['n_events'] - len(v['in_warmup'])} | "
                     f"{', '.join(str(d) for d in v['delays']) or '–'} | {v['n_alarms']} | "
                     f"{v['false_alarms']} ({v['false_alarms_before_first_cp']}) |")
    L.append("")
    md = "\n".join(L)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
    (out / f"{name}.md").write_text(md)
    print(md)
    print(f"wrote {out / name}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
