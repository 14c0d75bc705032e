"""Monitoring report: ``python -m experiments.monitor log_dir=DIR model=EXPORT [overrides]``.

Examples:
  python -m experiments.monitor log_dir=predlog model=outputs/tabular/RUN/export/1
  python -m experiments.monitor log_dir=predlog model=outputs/tabular/RUN/export \
      labels=labels.csv out=report window.by=time window.size=3600 webhook=http://host/hook

The settings are in ``configs/monitor.yaml`` (:class:`MonitorConfig`). Steps: read every file of
the prediction log (:func:`mlsd_jax.serving.predlog.read_records`) into a frame; load the
model's reference profile (``assets.extra/profile.json``, written at training time by
:func:`mlsd_jax.experiment.save_reference_profile`); join the labels file when given; fit a CBPE
estimator on the model's ``reference_scores.npz`` (the validation rows' scores and labels);
monitor window by window (:func:`mlsd_jax.monitoring.windows.monitor`, with a progress bar over
windows); evaluate the alert rules (log file, optional webhook, Prometheus text in
``metrics.prom``); write ``report.html`` (:mod:`mlsd_jax.monitoring.report`) and
``summary.json`` into ``out``. Errors a user can cause print one line naming the setting and
exit with status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mlsd_jax.errors import UserError, exit_for_user_error
from mlsd_jax.experiment import config_dir, typed

USER_ERRORS = (UserError, OmegaConfBaseException, FileNotFoundError, KeyError, ValueError)


@dataclasses.dataclass
class WindowConfig:
    by: str = "count"
    size: float = 5000
    origin: float | None = None


@dataclasses.dataclass
class EstimatorConfig:
    enabled: bool = True
    calibration: str = "auto"
    chunk_size: int | None = None


@dataclasses.dataclass
class ReportConfig:
    title: str = "Model monitoring report"
    top_features: int = 8


@dataclasses.dataclass
class MonitorConfig:
    """The ``configs/monitor.yaml`` settings (see that file for their meaning)."""

    log_dir: str = "???"
    model: str = "???"
    profile: str | None = None
    labels: str | None = None
    out: str | None = None
    window: WindowConfig = dataclasses.field(default_factory=WindowConfig)
    alpha: float = 0.05
    correction: str = "bh"
    features: list[str] | None = None
    prediction: str | None = "prob"
    threshold: float | None = None
    metric: str = "roc_auc"
    min_rows: int = 100
    estimator: EstimatorConfig = dataclasses.field(default_factory=EstimatorConfig)
    report: ReportConfig = dataclasses.field(default_factory=ReportConfig)
    progress: bool = True
    alert_log: str | None = "alerts.jsonl"
    webhook: str | None = None
    alerts: list[Any] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------ inputs
def read_labels(path: str | os.PathLike) -> dict[str, list]:
    """A labels file as columns ``{"request_id", "label", "row"}``: CSV with a header naming
    ``request_id`` and ``label`` (optional ``row``), or JSON lines with those keys. Empty labels
    are missing."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"labels={str(p)!r} does not exist")
    rows: list[dict] = []
    if p.suffix in (".jsonl", ".json", ".ndjson"):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"labels={str(p)!r} line {i}: not JSON ({e.msg})") from None
    else:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
    out: dict[str, list] = {"request_id": [], "label": [], "row": []}
    for i, r in enumerate(rows, 1):
        if "request_id" not in r or "label" not in r:
            raise ValueError(f"labels={str(p)!r} record {i}: needs 'request_id' and 'label' "
                             f"(got {sorted(r)})")
        lab = r["label"]
        out["request_id"].append(str(r["request_id"]))
        out["label"].append(float(lab) if lab not in (None, "") else np.nan)
        out["row"].append(int(r.get("row") or 0))
    return out


def load_reference(cfg: MonitorConfig):
    """(model version folder, card, profile, reference scores or None)."""
    from mlsd_jax.export.bundle import CARD
    from mlsd_jax.experiment import PROFILE_FILE, REFERENCE_SCORES_FILE
    from mlsd_jax.monitoring.profile import Profile
    from mlsd_jax.serving.batch import resolve_model

    model = resolve_model(cfg.model)
    extra = model if (model / CARD).exists() else model / "assets.extra"
    card = json.loads((extra / CARD).read_text())
    path = Path(cfg.profile) if cfg.profile else extra / PROFILE_FILE
    if not path.exists():
        if cfg.profile:
            raise FileNotFoundError(f"profile={str(path)!r} does not exist")
        raise FileNotFoundError(
            f"model={cfg.model!r}: no reference profile ({path} not found). Models exported by "
            f"a task with reference_inputs have one; pass profile=FILE for another")
    try:
        profile = Profile.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"profile {str(path)!r}: {e}") from None
    scores_path = extra / REFERENCE_SCORES_FILE
    scores = dict(np.load(scores_path)) if scores_path.exists() else None
    return model, card, profile, scores


def fit_estimator(cfg: MonitorConfig, scores: dict | None, card: dict):
    """A CBPE fitted on the reference scores and labels, or None (and why)."""
    from mlsd_jax.monitoring.estimate import CBPE

    if not cfg.estimator.enabled:
        return None, "estimator.enabled=false"
    if scores is None:
        return None, "the model has no reference_scores.npz"
    label = (card.get("reference_profile") or {}).get("label") or "label"
    if cfg.prediction not in scores or label not in scores:
        return None, (f"reference_scores.npz lacks {cfg.prediction!r} or {label!r} "
                      f"(it has {sorted(scores)})")
    y = np.asarray(scores[label], np.float64)
    s = np.asarray(scores[cfg.prediction], np.float64)
    chunk = cfg.estimator.chunk_size or max(min(5000, len(y) // 5), 1)
    est = CBPE(threshold=cfg.threshold if cfg.threshold is not None else 0.5,
               calibration=cfg.estimator.calibration, chunk_size=int(chunk))
    return est.fit(y, s), None


# ------------------------------------------------------------------------------------ windows
def _subframe(frame, w):
    from mlsd_jax.monitoring.windows import Frame

    return Frame(requests={k: v[w.requests] for k, v in frame.requests.items()},
                 rows={k: v[w.rows] for k, v in frame.rows.items()},
                 inputs=list(frame.inputs), outputs=list(frame.outputs))


def _empty_record(w) -> dict:
    duration = w.end - w.start
    return {"index": w.index, "start": w.start, "end": w.end, "duration_s": duration,
            "n_rows": 0, "n_requests": 0, "n_failed": 0,
            "throughput": {"rows_per_s": 0.0 if duration > 0 else None,
                           "requests_per_s": 0.0 if duration > 0 else None},
            "latency": {"p50": None, "p95": None, "p99": None, "mean": None},
            "error_rate": None, "fallback_rate": None, "drift": None, "features": {},
            "prediction": None, "pca": None, "quality": None}


def monitor_windows(frame, profile, *, by: str, size: float, origin=None, labels=None,
                    progress: bool = False, **kw):
    """:func:`mlsd_jax.monitoring.windows.monitor`, one window at a time (so a progress bar can
    follow long logs): the windows are cut on the whole frame, each is monitored on its own
    rows and requests, and its place in time (index, start, end, duration, throughput) is the
    whole frame's. The records equal those of one ``monitor`` call on the whole frame."""
    from tqdm import tqdm

    from mlsd_jax.monitoring.windows import MonitorResult, join_labels, monitor, windows

    cut = windows(frame, by, size, origin=origin)
    y = join_labels(frame, labels) if labels is not None else None
    records, config = [], None
    for w in tqdm(cut, desc="windows", unit="window", disable=not progress, file=sys.stderr):
        if w.n_requests == 0:
            records.append(_empty_record(w))
            continue
        sub = _subframe(frame, w)
        sub_labels = None
        if y is not None:
            sub_labels = {"request_id": sub.rows["request_id"].tolist(),
                          "row": sub.rows["row"].tolist(), "label": y[w.rows].tolist()}
        res = monitor(sub, profile, by="count", size=max(sub.n_rows, 1), labels=sub_labels, **kw)
        (rec,) = res.windows
        duration = w.end - w.start
        rec.update(index=w.index, start=w.start, end=w.end, duration_s=duration,
                   throughput={"rows_per_s": w.n_rows / duration if duration > 0 else None,
                               "requests_per_s": w.n_requests / duration if duration > 0 else None})
        records.append(rec)
        config = config or res.config
    if config is None:  # no requests at all: the settings as monitor() reports them
        config = monitor(frame, profile, by=by, size=size, origin=origin, labels=labels, **kw).config
    config = {**config, "by": by, "size": size}
    return MonitorResult(windows=records, config=config)


# ------------------------------------------------------------------------------------ run
def run(cfg: MonitorConfig | DictConfig | dict, out: str | os.PathLike | None = None) -> dict:
    """Builds the report; returns the summary (also written to ``out/summary.json``)."""
    from mlsd_jax.monitoring import report as R
    from mlsd_jax.monitoring.alerts import AlertManager, LogSink, MetricsSink, WebhookSink
    from mlsd_jax.monitoring.windows import records_frame
    from mlsd_jax.serving.predlog import log_files, read_records

    if not isinstance(cfg, MonitorConfig):
        cfg = typed(MonitorConfig, cfg)
    for key in ("log_dir", "model"):
        if getattr(cfg, key) in (None, "", "???"):
            raise UserError(f"{key} is required: python -m experiments.monitor log_dir=DIR model=EXPORT")
    log_dir = Path(cfg.log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"log_dir={cfg.log_dir!r} is not a folder (the server's log.dir)")
    if not log_files(log_dir):
        raise FileNotFoundError(f"log_dir={cfg.log_dir!r}: no prediction log files "
                                f"(predictions-*.sqlite) in it")
    out = Path(out or cfg.out or "outputs/monitor")
    out.mkdir(parents=True, exist_ok=True)
    model, card, profile, scores = load_reference(cfg)
    frame = records_frame(read_records(log_dir), profile)
    if cfg.prediction is not None and cfg.prediction not in frame.rows:
        raise KeyError(f"prediction={cfg.prediction!r} is not an output in the log "
                       f"(outputs: {frame.outputs}); set prediction=NAME or prediction=null")
    labels = read_labels(cfg.labels) if cfg.labels else None
    estimator, no_estimator = fit_estimator(cfg, scores, card) if cfg.prediction else (None, "no prediction")
    result = monitor_windows(
        frame, profile, by=cfg.window.by, size=cfg.window.size, origin=cfg.window.origin,
        labels=labels, progress=cfg.progress, alpha=cfg.alpha, correction=cfg.correction,
        features=cfg.features, prediction=cfg.prediction, threshold=cfg.threshold,
        metric=cfg.metric, estimator=estimator, min_rows=cfg.min_rows)

    metrics_sink = MetricsSink()
    sinks: list = [metrics_sink]
    if cfg.alert_log:
        sinks.append(LogSink(out / cfg.alert_log))
    if cfg.webhook:
        sinks.append(WebhookSink(cfg.webhook))
    manager = AlertManager(cfg.alerts, sinks)
    alerts = []
    for rec in result.to_dict()["windows"]:
        alerts += [a.to_dict() for a in manager.evaluate(rec)]
    # written whole then renamed: a server scraping it (serve metrics_textfiles) never reads half
    tmp_prom = out / ".metrics.prom.tmp"
    tmp_prom.write_text(metrics_sink.render())
    os.replace(tmp_prom, out / "metrics.prom")

    meta = {"model": card.get("task"), "model_version": card.get("version"),
            "model_path": str(model), "log_dir": str(log_dir),
            "labels": cfg.labels, "estimator": None if estimator is not None else no_estimator,
            "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "alert_sink_errors": manager.sink_errors}
    summary = R.summarize(result, alerts, meta=meta, top=cfg.report.top_features)
    res = result.to_dict()
    dists = R.feature_distributions(profile, frame, res, summary["top_features"])
    pred = R.prediction_distribution(profile, frame, res)
    page = R.render_html(summary, dists, pred, title=cfg.report.title)
    (out / "report.html").write_text(page)
    summary["paths"] = {"report": str(out / "report.html"), "summary": str(out / "summary.json"),
                        "alert_log": str(out / cfg.alert_log) if cfg.alert_log else None,
                        "metrics": str(out / "metrics.prom")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    return summary


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="monitor")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        conf = typed(MonitorConfig, cfg)
        out = conf.out or HydraConfig.get().runtime.output_dir
        summary = run(conf, out)
    except USER_ERRORS as e:
        exit_for_user_error(e)
    brief = {k: summary[k] for k in ("windows", "rows", "requests", "windows_with_drift",
                                     "prediction_drift_windows", "top_features", "quality",
                                     "paths")}
    brief["alerts"] = {k: summary["alerts"][k] for k in ("fired", "by_rule")}
    print(json.dumps(brief, indent=2), flush=True)


if __name__ == "__main__":
    main()
