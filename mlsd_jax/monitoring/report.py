"""The monitoring report: one self-contained HTML page (inline SVG plots, no scripts or files
fetched) and the JSON summary it is built from.

:func:`summarize` turns a :class:`~mlsd_jax.monitoring.windows.MonitorResult` (and the alerts
that fired) into a JSON-able summary; :func:`feature_distributions` computes reference vs
current distributions of the features that drifted most; :func:`render_html` draws the page:

* a summary table (windows, rows, requests, drifted features, quality, latency, errors and the
  alerts fired per window) and the alerts fired;
* per-feature reference vs current distributions of the most drifted features (numeric: the
  shares of the profile's histogram bins, whose inner edges are the reference's 5%..95%
  quantiles; categorical: the shares of the profile's categories plus ``other``), for all
  monitored rows and for the window where the feature drifted most;
* drift scores over windows: the number of drifted features, PSI per feature and a table of
  adjusted p-values (feature x window, drifted cells marked);
* realised vs estimated quality over windows with the estimator's band (CBPE);
* latency p50 / p99 and the error rate over windows;
* prediction distribution shift: reference vs current histogram of the score and its PSI and
  KS statistic over windows.

The plots are drawn as SVG by this module (no plotting library needed), so the page renders in
any browser; a small inline script records in ``document.body.dataset.rendered`` how many plots
have a non-zero size after load (what the headless-browser test reads).
"""
from __future__ import annotations

import datetime as _dt
import html
import math
from typing import Any, Mapping, Sequence

import numpy as np

from mlsd_jax.monitoring.profile import NumericProfile, Profile, histogram
from mlsd_jax.monitoring.windows import Frame, MonitorResult, jsonsafe, lookup

__all__ = ["summarize", "feature_distributions", "prediction_distribution", "render_html",
           "top_features"]

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


# ------------------------------------------------------------------------------------ data
def top_features(result: Mapping, k: int = 8) -> list[str]:
    """Features ranked by the number of windows in which they drifted, then by their largest
    PSI; the first ``k``."""
    windows = result["windows"]
    feats = list(result["config"].get("features") or [])
    score = {}
    for f in feats:
        n = sum(1 for w in windows if lookup(w, f"features.{f}.drift"))
        psi = [lookup(w, f"features.{f}.psi") for w in windows]
        psi = [p for p in psi if p is not None]
        score[f] = (n, max(psi) if psi else 0.0)
    return sorted(feats, key=lambda f: (-score[f][0], -score[f][1], f))[:k]


def _shares(counts) -> list[float]:
    c = np.asarray(counts, np.float64)
    total = c.sum()
    return (c / total).tolist() if total > 0 else [0.0] * c.size


def _distribution(prof, values) -> tuple[list[str], list[float]]:
    """(bin labels, shares) of ``values`` over the profile's bins or categories + other."""
    from mlsd_jax.monitoring.drift import category_counts

    if isinstance(prof, NumericProfile):
        x = np.asarray(values, np.float64)
        x = x[~np.isnan(x)]
        return _numeric_labels(prof), _shares(histogram(x, prof.edges))
    counts, _, _ = category_counts(prof, values)
    return list(prof.categories) + ["other"], _shares(counts)


def _numeric_labels(prof: NumericProfile) -> list[str]:
    e = [_fmt(v) for v in prof.edges]
    if not e:
        return ["all"]
    return [f"<={e[0]}"] + [f"{a}..{b}" for a, b in zip(e[:-1], e[1:])] + [f">{e[-1]}"]


def _reference(prof) -> list[float]:
    if isinstance(prof, NumericProfile):
        return _shares(prof.hist)
    return _shares(list(prof.counts) + [prof.other])


def feature_distributions(profile: Profile, frame: Frame, result: Mapping,
                          features: Sequence[str], *, max_bins: int = 20) -> list[dict]:
    """Per feature: the reference shares, the shares over every monitored row and over the
    window with the largest PSI for that feature (categorical: the ``max_bins`` - 1 largest
    reference categories, the rest folded into ``other``)."""
    from mlsd_jax.monitoring.windows import windows as cut

    cfg = result["config"]
    spans = {w.index: w.rows for w in cut(frame, cfg["by"], cfg["size"])}
    out = []
    for f in features:
        if f not in profile.columns or f not in frame.rows:
            continue
        prof = profile.columns[f]
        psi = [(lookup(w, f"features.{f}.psi"), w["index"]) for w in result["windows"]]
        psi = [(p, i) for p, i in psi if p is not None]
        worst = max(psi)[1] if psi else None
        labels, cur = _distribution(prof, frame.rows[f])
        ref = _reference(prof)
        win = _distribution(prof, frame.rows[f][spans[worst]])[1] if worst in spans else None
        if len(labels) > max_bins and not isinstance(prof, NumericProfile):
            keep = max_bins - 1

            def fold(s):
                return None if s is None else list(s[:keep]) + [float(sum(s[keep:]))]
            labels, ref, cur, win = labels[:keep] + ["other"], fold(ref), fold(cur), fold(win)
        out.append({"feature": f, "kind": prof.kind, "bins": labels, "reference": ref,
                    "current": cur, "worst_window": worst, "worst_window_shares": win,
                    "windows_drifted": sum(1 for w in result["windows"]
                                           if lookup(w, f"features.{f}.drift")),
                    "max_psi": max(psi)[0] if psi else None})
    return out


def prediction_distribution(profile: Profile, frame: Frame, result: Mapping) -> dict | None:
    """Reference vs current shares of the prediction column over the profile's bins."""
    cfg = result["config"]
    col, ref_col = cfg.get("prediction"), cfg.get("profile_prediction")
    if not col or not ref_col or col not in frame.rows or ref_col not in profile.columns:
        return None
    prof = profile.columns[ref_col]
    labels, cur = _distribution(prof, frame.rows[col])
    return {"column": col, "profile_column": ref_col, "bins": labels,
            "reference": _reference(prof), "current": cur}


def summarize(result: MonitorResult | Mapping, alerts: Sequence[Mapping] = (), *,
              meta: Mapping[str, Any] | None = None, top: int = 8) -> dict:
    """The JSON summary: totals, per-feature drift counts, quality and latency ranges, the
    alerts fired and every window record."""
    res = result.to_dict() if isinstance(result, MonitorResult) else jsonsafe(dict(result))
    ws = res["windows"]
    feats = res["config"].get("features") or []

    def vals(path):
        return [v for v in (lookup(w, path) for w in ws) if isinstance(v, (int, float))]

    def span(path):
        v = vals(path)
        return {"min": min(v), "max": max(v), "mean": float(np.mean(v))} if v else None

    metric = res["config"].get("metric")
    fired: dict[str, int] = {}
    for a in alerts:
        fired[a["rule"]] = fired.get(a["rule"], 0) + 1
    return jsonsafe({
        **(dict(meta) if meta else {}),
        "windows": len(ws), "rows": int(sum(w["n_rows"] for w in ws)),
        "requests": int(sum(w["n_requests"] for w in ws)),
        "failed_requests": int(sum(w["n_failed"] for w in ws)),
        "windows_with_drift": sum(1 for w in ws if (lookup(w, "drift.n_drifted") or 0) > 0),
        "drift_windows_per_feature": {f: sum(1 for w in ws if lookup(w, f"features.{f}.drift"))
                                      for f in feats},
        "top_features": top_features(res, top),
        "prediction_drift_windows": sum(1 for w in ws if lookup(w, "prediction.drift")),
        "quality": {"metric": metric,
                    "realised": span(f"quality.realised.{metric}"),
                    "estimated": span(f"quality.estimated.{metric}")},
        "latency_ms": {"p50": span("latency.p50"), "p99": span("latency.p99")},
        "error_rate": span("error_rate"),
        "alerts": {"fired": len(alerts), "by_rule": fired, "list": list(alerts)},
        "config": res["config"],
        "window_records": ws,
    })


# ------------------------------------------------------------------------------------ SVG
def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)) or (isinstance(v, float) and v == round(v) and abs(v) < 1e6):
        return str(int(v))
    a = abs(v)
    return f"{v:.3g}" if a >= 1e-3 else f"{v:.2e}"


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


class _Axes:
    """Maps data to pixels inside a ``w`` x ``h`` SVG with margins."""

    def __init__(self, w, h, x0, x1, y0, y1, *, left=56, right=12, top=24, bottom=40):
        self.w, self.h, self.l, self.r, self.t, self.b = w, h, left, right, top, bottom
        if y1 <= y0:
            y0, y1 = y0 - 0.5, y1 + 0.5
        if x1 <= x0:
            x0, x1 = x0 - 0.5, x1 + 0.5
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1

    def x(self, v):
        return self.l + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.l - self.r)

    def y(self, v):
        return self.h - self.b - (v - self.y0) / (self.y1 - self.y0) * (self.h - self.t - self.b)

    def frame(self, title, ylabel, xlabel) -> list[str]:
        out = [f'<rect x="{self.l}" y="{self.t}" width="{self.w - self.l - self.r}" '
               f'height="{self.h - self.t - self.b}" fill="#fafafa" stroke="#999"/>',
               f'<text x="{self.w / 2}" y="15" text-anchor="middle" font-size="13" '
               f'font-weight="bold">{_esc(title)}</text>',
               f'<text x="12" y="{(self.h - self.b + self.t) / 2}" font-size="11" '
               f'transform="rotate(-90 12 {(self.h - self.b + self.t) / 2})" '
               f'text-anchor="middle">{_esc(ylabel)}</text>',
               f'<text x="{(self.l + self.w - self.r) / 2}" y="{self.h - 4}" font-size="11" '
               f'text-anchor="middle">{_esc(xlabel)}</text>']
        for v in np.linspace(self.y0, self.y1, 5):
            yy = self.y(v)
            out.append(f'<line x1="{self.l}" x2="{self.w - self.r}" y1="{yy:.1f}" y2="{yy:.1f}" '
                       f'stroke="#ddd"/><text x="{self.l - 4}" y="{yy + 4:.1f}" font-size="10" '
                       f'text-anchor="end">{_esc(_fmt(float(v)))}</text>')
        return out


def _svg(w, h, body: list[str], label: str) -> str:
    return (f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" role="img" aria-label="{_esc(label)}">'
            f'<title>{_esc(label)}</title>{"".join(body)}</svg>')


def _legend(names_colors, x, y) -> list[str]:
    out = []
    for i, (name, color) in enumerate(names_colors):
        yy = y + 14 * i
        out.append(f'<rect x="{x}" y="{yy - 8}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 14}" y="{yy + 1}" font-size="10">{_esc(name)}</text>')
    return out


def bar_chart(bins: Sequence[str], series: Mapping[str, Sequence[float] | None], *, title: str,
              ylabel: str = "share", xlabel: str = "", w: int = 560, h: int = 240) -> str:
    """Grouped bars: one group per bin, one bar per series (None series are left out)."""
    series = {k: list(v) for k, v in series.items() if v is not None}
    top = max([max(v) for v in series.values() if v] + [1e-9])
    ax = _Axes(w, h, 0, max(len(bins), 1), 0, top * 1.1, bottom=56)
    body = ax.frame(title, ylabel, xlabel)
    n = max(len(series), 1)
    gw = (ax.x(1) - ax.x(0)) * 0.8
    for j, (name, vals) in enumerate(series.items()):
        color = PALETTE[j % len(PALETTE)]
        for i, v in enumerate(vals):
            x = ax.x(i) + (ax.x(1) - ax.x(0)) * 0.1 + j * gw / n
            y = ax.y(max(v, 0.0))
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(gw / n - 0.5, 0.5):.1f}" '
                        f'height="{ax.y(0) - y:.1f}" fill="{color}" opacity="0.85">'
                        f'<title>{_esc(name)} {_esc(bins[i])}: {v:.4f}</title></rect>')
    step = max(1, math.ceil(len(bins) / 24))
    for i in range(0, len(bins), step):
        x = (ax.x(i) + ax.x(i + 1)) / 2
        yy = ax.y(0) + 10
        body.append(f'<text x="{x:.1f}" y="{yy:.1f}" font-size="9" text-anchor="end" '
                    f'transform="rotate(-40 {x:.1f} {yy:.1f})">{_esc(str(bins[i])[:14])}</text>')
    body += _legend([(k, PALETTE[j % len(PALETTE)]) for j, k in enumerate(series)], ax.w - 170, ax.t + 12)
    return _svg(w, h, body, title)


def line_chart(x: Sequence[float], series: Mapping[str, Sequence[Any]], *, title: str,
               ylabel: str, xlabel: str = "window", band: tuple[Sequence, Sequence] | None = None,
               band_label: str = "band", hlines: Mapping[str, float] | None = None,
               marks: Sequence[int] = (), w: int = 720, h: int = 260) -> str:
    """Lines over windows (None values break the line); an optional shaded band, horizontal
    reference lines and vertical marks (e.g. windows where an alert fired)."""
    def finite(seq):
        return [float(v) for v in seq if isinstance(v, (int, float)) and math.isfinite(v)]

    ys = [v for s in series.values() for v in finite(s)]
    if band is not None:
        ys += finite(band[0]) + finite(band[1])
    ys += list((hlines or {}).values())
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or 0.5
    xs = list(x) or [0]
    ax = _Axes(w, h, min(xs), max(xs), lo - pad, hi + pad)
    body = ax.frame(title, ylabel, xlabel)
    step = max(1, math.ceil(len(xs) / 20))
    for xi in xs[::step]:
        body.append(f'<text x="{ax.x(xi):.1f}" y="{ax.y(ax.y0) + 13:.1f}" font-size="10" '
                    f'text-anchor="middle">{_esc(_fmt(xi))}</text>')
    for i in marks:
        body.append(f'<line x1="{ax.x(i):.1f}" x2="{ax.x(i):.1f}" y1="{ax.t}" y2="{ax.y(ax.y0):.1f}" '
                    f'stroke="#f5a623" stroke-width="3" opacity="0.5"><title>alert at window {i}'
                    f'</title></line>')
    if band is not None:
        pts_hi = [(ax.x(xi), ax.y(float(b))) for xi, b in zip(xs, band[1]) if b is not None]
        pts_lo = [(ax.x(xi), ax.y(float(b))) for xi, b in zip(xs, band[0]) if b is not None]
        if pts_hi and pts_lo:
            poly = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts_hi + pts_lo[::-1])
            body.append(f'<polygon points="{poly}" fill="#1f77b4" opacity="0.15">'
                        f'<title>{_esc(band_label)}</title></polygon>')
    for name, yv in (hlines or {}).items():
        body.append(f'<line x1="{ax.l}" x2="{ax.w - ax.r}" y1="{ax.y(yv):.1f}" y2="{ax.y(yv):.1f}" '
                    f'stroke="#555" stroke-dasharray="4 3"/><text x="{ax.w - ax.r - 2}" '
                    f'y="{ax.y(yv) - 3:.1f}" font-size="9" text-anchor="end">{_esc(name)}</text>')
    for j, (name, vals) in enumerate(series.items()):
        color = PALETTE[j % len(PALETTE)]
        seg: list[str] = []
        for xi, v in zip(xs, vals):
            if isinstance(v, (int, float)) and math.isfinite(v):
                seg.append(f"{ax.x(xi):.1f},{ax.y(float(v)):.1f}")
                body.append(f'<circle cx="{ax.x(xi):.1f}" cy="{ax.y(float(v)):.1f}" r="2.5" '
                            f'fill="{color}"><title>{_esc(name)} window {xi}: {_fmt(float(v))}'
                            f'</title></circle>')
            else:
                if len(seg) > 1:
                    body.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" '
                                f'stroke-width="1.5"/>')
                seg = []
        if len(seg) > 1:
            body.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" '
                        f'stroke-width="1.5"/>')
    names = [(k, PALETTE[j % len(PALETTE)]) for j, k in enumerate(series)]
    if band is not None:
        names.append((band_label, "#aac8e4"))
    body += _legend(names, ax.w - 190, ax.t + 12)
    return _svg(w, h, body, title)


# ------------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}.drift{background:#f8c9c9}.alert{background:#ffe3a8}
.scroll{overflow-x:auto;max-width:100%}.grid{display:flex;flex-wrap:wrap;gap:12px}
.note{color:#555;font-size:12px}
"""

_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var n = 0;
  document.querySelectorAll('svg.plot, img.plot').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width > 0 && r.height > 0) { n += 1; }
  });
  document.body.dataset.rendered = String(n);
});
</script>
"""


def _time(ts) -> str:
    if not isinstance(ts, (int, float)):
        return "–"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes=None, left=1) -> str:
    out = ["<table><tr>" + "".join(f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>'
                                   for i, h in enumerate(header)) + "</tr>"]
    for r, row in enumerate(rows):
        cells = []
        for i, v in enumerate(row):
            cls = (classes[r][i] if classes else "") + (" l" if i < left else "")
            text = _fmt(v) if isinstance(v, (int, float)) or v is None else str(v)
            cells.append(f'<td class="{cls.strip()}">{_esc(text)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _window_index(alert: Mapping):
    w = alert.get("window")
    return w.get("index") if isinstance(w, Mapping) else w


def render_html(summary: Mapping[str, Any], distributions: Sequence[Mapping] = (),
                prediction: Mapping | None = None, *, title: str = "Model monitoring report") -> str:
    """The report page from :func:`summarize`'s summary and the distributions."""
    ws = summary["window_records"]
    cfg = summary["config"]
    metric = cfg.get("metric")
    x = [w["index"] for w in ws]
    alerts = summary["alerts"]["list"]
    fired_at: dict[int, list[str]] = {}
    for a in alerts:
        fired_at.setdefault(_window_index(a), []).append(a["rule"])
    marks = sorted(i for i in fired_at if isinstance(i, int))
    plots: list[str] = []
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{_esc(title)}</h1>"]

    meta = [("model", summary.get("model")), ("model version", summary.get("model_version")),
            ("prediction log", summary.get("log_dir")), ("generated", summary.get("generated")),
            ("windows", f"{summary['windows']} ({cfg.get('by')} of {cfg.get('size')})"),
            ("rows / requests", f"{summary['rows']} / {summary['requests']}"),
            ("failed requests", summary["failed_requests"]),
            ("windows with feature drift", f"{summary['windows_with_drift']} "
                                           f"(alpha {cfg.get('alpha')}, {cfg.get('correction')})"),
            ("windows with prediction drift", summary["prediction_drift_windows"]),
            ("alerts fired", summary["alerts"]["fired"])]
    parts.append("<h2>Summary</h2>" + _table(["", "value"],
                                             [(k, "–" if v is None else v) for k, v in meta]))
    rows, classes = [], []
    for w in ws:
        q = w.get("quality") or {}
        fired = ", ".join(fired_at.get(w["index"], []))
        rows.append([w["index"], _time(w["start"]), w["n_rows"], w["n_requests"],
                     lookup(w, "drift.n_drifted"), ", ".join(lookup(w, "drift.drifted") or [])[:60],
                     lookup(w, "prediction.p_value"), lookup(q, f"realised.{metric}"),
                     lookup(q, f"estimated.{metric}"), lookup(w, "latency.p50"),
                     lookup(w, "latency.p99"), w.get("error_rate"), fired])
        classes.append([""] * 4 + ["drift" if (lookup(w, "drift.n_drifted") or 0) else ""] * 2 +
                       ["drift" if lookup(w, "prediction.drift") else ""] + [""] * 5 +
                       ["alert" if fired else ""])
    parts.append("<h2>Windows</h2>" + _table(
        ["window", "start (UTC)", "rows", "requests", "drifted features", "which",
         "prediction p", f"realised {metric}", f"estimated {metric}", "latency p50 ms",
         "latency p99 ms", "error rate", "alerts"], rows, classes, left=2))
    if alerts:
        parts.append("<h2>Alerts fired</h2>" + _table(
            ["rule", "window", "metric", "value", "threshold", "severity"],
            [[a["rule"], _window_index(a), a.get("metric"), a.get("value"), a.get("threshold"),
              a.get("severity")] for a in alerts]))
    else:
        parts.append("<h2>Alerts fired</h2><p>None.</p>")

    # Per-feature distributions.
    if distributions:
        parts.append("<h2>Reference vs current: the features that drifted most</h2>"
                     "<p class='note'>Shares of rows per bin (numeric: the profile's quantile bins; "
                     "categorical: the profile's categories and <i>other</i>), over all monitored "
                     "rows and over the window with the feature's largest PSI.</p><div class='grid'>")
        for d in distributions:
            series = {"reference": d["reference"], "current (all)": d["current"]}
            if d.get("worst_window_shares") is not None:
                series[f"window {d['worst_window']}"] = d["worst_window_shares"]
            svg = bar_chart(d["bins"], series, title=f"{d['feature']} ({d['kind']}): drifted in "
                            f"{d['windows_drifted']} windows, max PSI {_fmt(d['max_psi'])}")
            plots.append(svg)
            parts.append(svg)
        parts.append("</div>")

    # Drift scores over windows.
    top = summary.get("top_features") or []
    parts.append("<h2>Drift over windows</h2>")
    svg = line_chart(x, {"drifted features": [lookup(w, "drift.n_drifted") for w in ws],
                         "prediction drift (0/1)": [None if lookup(w, "prediction.drift") is None
                                                    else int(lookup(w, "prediction.drift"))
                                                    for w in ws]},
                     title="Drifted features per window", ylabel="count", marks=marks)
    plots.append(svg)
    parts.append(svg)
    if top:
        svg = line_chart(x, {f: [lookup(w, f"features.{f}.psi") for w in ws] for f in top},
                         title="PSI per feature (most drifted features)", ylabel="PSI",
                         hlines={"0.1": 0.1, "0.25": 0.25}, marks=marks)
        plots.append(svg)
        parts.append(svg)
        feats = list(cfg.get("features") or [])
        prow, pcls = [], []
        for f in feats:
            ps = [lookup(w, f"features.{f}.p_adjusted") for w in ws]
            prow.append([f] + ["–" if p is None else "<1e-4" if p < 1e-4 else f"{p:.3f}"
                               for p in ps])
            pcls.append([""] + ["drift" if lookup(w, f"features.{f}.drift") else "" for w in ws])
        parts.append("<p class='note'>Adjusted p-values per feature and window (red: drift).</p>"
                     "<div class='scroll'>" + _table(["feature"] + [str(i) for i in x], prow, pcls)
                     + "</div>")

    # Quality.
    parts.append(f"<h2>Quality: realised vs estimated {_esc(metric)}</h2>")
    real = [lookup(w, f"quality.realised.{metric}") for w in ws]
    est = [lookup(w, f"quality.estimated.{metric}") for w in ws]
    if any(v is not None for v in real + est):
        band = None
        if any(v is not None for v in est):
            band = ([lookup(w, f"quality.estimated_lower.{metric}") for w in ws],
                    [lookup(w, f"quality.estimated_upper.{metric}") for w in ws])
        ref = (cfg.get("estimator") or {}).get("reference") or {}
        hl = {}
        if isinstance(ref.get(metric), Mapping) and ref[metric].get("mean") is not None:
            hl["reference mean"] = float(ref[metric]["mean"])
        svg = line_chart(x, {f"realised {metric}": real, f"estimated {metric} (CBPE)": est},
                         title=f"{metric} over windows", ylabel=metric, band=band,
                         band_label="CBPE band", hlines=hl, marks=marks)
        plots.append(svg)
        parts.append(svg)
    else:
        parts.append("<p>No labels and no estimator: no quality.</p>")

    # Serving health.
    parts.append("<h2>Latency and errors</h2><div class='grid'>")
    svg = line_chart(x, {"p50": [lookup(w, "latency.p50") for w in ws],
                         "p99": [lookup(w, "latency.p99") for w in ws]},
                     title="Latency per window", ylabel="ms", marks=marks, w=560)
    plots.append(svg)
    parts.append(svg)
    svg = line_chart(x, {"error rate": [w.get("error_rate") for w in ws],
                         "fallback rate": [w.get("fallback_rate") for w in ws]},
                     title="Error and fallback rate per window", ylabel="share", marks=marks, w=560)
    plots.append(svg)
    parts.append(svg + "</div>")

    # Prediction shift.
    parts.append("<h2>Prediction distribution</h2><div class='grid'>")
    if prediction is not None:
        svg = bar_chart(prediction["bins"], {"reference": prediction["reference"],
                                             "current (all)": prediction["current"]},
                        title=f"{prediction['column']}: reference vs current")
        plots.append(svg)
        parts.append(svg)
    if any(lookup(w, "prediction.psi") is not None for w in ws):
        svg = line_chart(x, {"PSI": [lookup(w, "prediction.psi") for w in ws],
                             "KS statistic": [lookup(w, "prediction.ks_statistic") for w in ws]},
                         title="Prediction shift per window", ylabel="score", marks=marks, w=560)
        plots.append(svg)
        parts.append(svg)
    parts.append("</div>")
    parts.append(f"<p class='note' id='plot-count' data-plots='{len(plots)}'>{len(plots)} plots.</p>")
    parts.append(_SCRIPT + "</body></html>")
    return "".join(parts)
