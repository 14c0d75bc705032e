"""Feedback loop: ``python -m experiments.retrain base_path=MODELS/NAME log_dir=DIR labels=FILE``.

Examples:
  python -m experiments.retrain base_path=models/acs log_dir=predlog labels=labels.csv
  python -m experiments.retrain base_path=models/acs log_dir=predlog labels=labels.csv \\
      trigger=alerts alerts=outputs/monitor/RUN/alerts.jsonl eval_window=5000 min_delta=0.002 \\
      'overrides=["trainer.max_steps=2000","trainer.batch_size=256"]'

The settings are in ``configs/retrain.yaml`` (:class:`RetrainConfig`). Steps:

1. Trigger: ``schedule`` retrains now; ``alerts`` retrains only when the monitor's alert log
   (``alerts``: the ``alerts.jsonl`` written by ``python -m experiments.monitor``) holds an
   alert fired after the last decision in ``decisions`` (else it prints ``no trigger``, writes
   nothing and exits 0).
2. The serving model: the version that ``serving_label`` names in ``<base_path>/labels.json``,
   else the newest version folder; its model card holds the composed config it was trained
   with.
3. Rows: the prediction log (``log_dir``) joined with the late labels (``labels``) by request id
   and row (:func:`mlsd_jax.monitoring.feedback.feedback_table`); unlabelled rows are dropped.
   The freshest ``eval_window`` labelled rows are held out as the evaluation window; the older
   ones become ``<workdir>/feedback.parquet``.
4. Candidate: the serving model's config with ``data.feedback=[feedback.parquet]`` (added to the
   train split only) and ``overrides``, run by :func:`mlsd_jax.experiment.run` into
   ``<workdir>/candidate``.
5. Both models score the same evaluation window's raw inputs (as logged) through their exported
   bundles; the metric is ROC-AUC of the ``prob`` output
   (:func:`mlsd_jax.monitoring.estimate.roc_auc`, equal to ``sklearn.metrics.roc_auc_score``).
6. Promotion iff candidate >= serving + ``min_delta``: the candidate export is copied to
   ``<base_path>/<newest + 1>`` (written under a temporary name, then renamed, so a polling
   server never sees half a version) and ``promote_label`` is pointed at it in
   ``labels.json`` (other labels kept); running servers pick both up on their next poll.
7. ``<workdir>/decision.json`` (both scores, rows, window bounds, versions, the reason) is
   always written and appended to ``decisions`` (default ``<base_path>/decisions.jsonl``).

Errors a user can cause print one line naming the setting and exit with status 2;
``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mlsd_jax.errors import UserError, exit_for_user_error
from mlsd_jax.experiment import config_dir, typed

USER_ERRORS = (UserError, OmegaConfBaseException, FileNotFoundError, KeyError, ValueError)
TRIGGERS = ("schedule", "alerts")
METRIC = "roc_auc"


@dataclasses.dataclass
class RetrainConfig:
    """The ``configs/retrain.yaml`` settings (see that file for their meaning)."""

    base_path: str = "???"
    log_dir: str = "???"
    labels: str = "???"
    trigger: str = "schedule"
    alerts: str | None = None
    serving_label: str | None = "stable"
    model: str | None = None
    since: float | None = None
    until: float | None = None
    eval_window: int = 5000
    min_delta: float = 0.0
    promote_label: str | None = "canary"
    prediction: str = "prob"
    overrides: list[str] = dataclasses.field(default_factory=list)
    workdir: str | None = None
    decisions: str | None = None


# ------------------------------------------------------------------------------ serving model
def model_versions(base: Path) -> list[int]:
    return sorted(int(p.name) for p in base.iterdir()
                  if p.name.isascii() and p.name.isdigit() and p.is_dir())


def read_version_labels(base: Path) -> dict[str, int]:
    from mlsd_jax.serving.store import LABELS_FILE

    path = base / LABELS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {str(k): int(v) for k, v in data.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"base_path={str(base)!r}: {LABELS_FILE} is not a JSON object "
                         f"{{label: version}} ({e})") from None


def serving_version(cfg: RetrainConfig) -> tuple[int, str]:
    """(version, how it was chosen): ``serving_label``'s version, else the newest."""
    base = Path(cfg.base_path)
    if not base.is_dir():
        raise FileNotFoundError(f"base_path={cfg.base_path!r} is not a folder (the served "
                                f"model's folder of numbered versions)")
    versions = model_versions(base)
    if not versions:
        raise FileNotFoundError(f"base_path={cfg.base_path!r} has no numbered version folders")
    labels = read_version_labels(base)
    if cfg.serving_label and cfg.serving_label in labels:
        v = labels[cfg.serving_label]
        if v not in versions:
            raise FileNotFoundError(f"serving_label={cfg.serving_label!r} names version {v}, "
                                    f"which is not in base_path={cfg.base_path!r} ({versions})")
        return v, f"label {cfg.serving_label!r}"
    return versions[-1], "newest version"


def read_card(path: Path) -> dict:
    from mlsd_jax.export.bundle import CARD

    card_path = path / "assets.extra" / CARD
    if not card_path.exists():
        raise FileNotFoundError(f"base_path: version folder {str(path)!r} has no model card "
                                f"(assets.extra/{CARD})")
    return json.loads(card_path.read_text())


# ------------------------------------------------------------------------------ trigger
def _last_decision_time(path: Path) -> float | None:
    if not path.exists():
        return None
    last = None
    for line in path.read_text().splitlines():
        if line.strip():
            last = float(json.loads(line)["time"])
    return last


def triggered(cfg: RetrainConfig, decisions: Path) -> tuple[bool, str]:
    if cfg.trigger == "schedule":
        return True, "trigger=schedule"
    if not cfg.alerts:
        raise UserError("alerts is required with trigger=alerts (the alerts.jsonl written by "
                        "python -m experiments.monitor)")
    path = Path(cfg.alerts)
    if not path.exists():
        raise FileNotFoundError(f"alerts={cfg.alerts!r} does not exist")
    since = _last_decision_time(decisions)
    newest = None
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            fired = float(json.loads(line)["fired_at"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"alerts={cfg.alerts!r} line {i}: not an alert record with "
                             f"'fired_at'") from None
        if since is None or fired > since:
            newest = fired if newest is None else max(newest, fired)
    if newest is None:
        return False, ("no trigger: no alert in alerts=" + repr(cfg.alerts)
                       + (f" after the last decision ({since:.3f})" if since is not None else ""))
    return True, f"trigger=alerts: alert fired at {newest:.3f}"


# ------------------------------------------------------------------------------ steps
def validate(cfg: RetrainConfig) -> None:
    for key in ("base_path", "log_dir", "labels"):
        if getattr(cfg, key) in (None, "", "???"):
            raise UserError(f"{key} is required: python -m experiments.retrain base_path=DIR "
                            f"log_dir=DIR labels=FILE")
    if cfg.trigger not in TRIGGERS:
        raise UserError(f"trigger={cfg.trigger!r}: expected one of {list(TRIGGERS)}")
    if cfg.eval_window < 1:
        raise UserError(f"eval_window={cfg.eval_window!r}: expected an integer >= 1 "
                        f"(labelled rows)")
    if not np.isfinite(cfg.min_delta):
        raise UserError(f"min_delta={cfg.min_delta!r}: expected a finite number")
    if cfg.promote_label is not None and (not cfg.promote_label or cfg.promote_label.isdigit()):
        raise UserError(f"promote_label={cfg.promote_label!r}: expected a label name such as "
                        f"'canary' (or null to only add the version)")


def candidate_config(card_config: dict, feedback: Path, overrides: list[str], workdir: Path):
    """The serving model's composed config + ``data.feedback`` + ``overrides``."""
    cfg = OmegaConf.create(card_config)
    if "data" not in cfg:
        raise ValueError("base_path: the serving model's card config has no 'data' node")
    with open_dict(cfg):
        cfg.data.feedback = [str(feedback)]
        cfg.workdir = str(workdir)
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"overrides: {item!r} is not key=value")
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            raise UserError(f"overrides: {key!r} is not a setting of the serving model's config")
        OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"x={value}"]).x, merge=False)
    return cfg


def score(path: Path, inputs: dict, labels: np.ndarray, prediction: str,
          batch: int = 4096) -> tuple[float | None, np.ndarray]:
    from mlsd_jax.export.bundle import load_bundle
    from mlsd_jax.monitoring.estimate import roc_auc

    bundle = load_bundle(path)
    n = len(labels)
    outs = []
    for i in range(0, n, batch):
        out = bundle.predict({k: v[i:i + batch] for k, v in inputs.items()})
        if prediction not in out:
            raise KeyError(f"prediction={prediction!r} is not an output of {str(path)!r} "
                           f"(outputs: {sorted(out)})")
        outs.append(np.asarray(out[prediction], np.float64).ravel())
    s = np.concatenate(outs) if outs else np.zeros(0)
    return roc_auc(labels, s), s


def promote(cfg: RetrainConfig, export: Path) -> tuple[int, dict]:
    """Copies the candidate export to ``base_path/<newest + 1>`` and moves the label."""
    from mlsd_jax.serving.store import set_labels

    base = Path(cfg.base_path)
    new = model_versions(base)[-1] + 1
    tmp = base / f".{new}.incoming-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(export, tmp)
    os.rename(tmp, base / str(new))
    labels = read_version_labels(base)
    if cfg.promote_label:
        labels[cfg.promote_label] = new
        set_labels(base, labels)
    return new, labels


def _bounds(t) -> dict:
    ts = np.asarray(t.columns["ts"], np.float64)
    return {"rows": t.n_rows, "first_ts": float(ts.min()) if len(ts) else None,
            "last_ts": float(ts.max()) if len(ts) else None}


def run(cfg: RetrainConfig | DictConfig | dict, workdir: str | os.PathLike | None = None) -> dict:
    """One retrain decision; returns it (also ``<workdir>/decision.json``), or
    ``{"decision": "no trigger", ...}`` when ``trigger=alerts`` finds no new alert."""
    from experiments.monitor import read_labels
    from mlsd_jax.experiment import run as run_experiment
    from mlsd_jax.monitoring.feedback import feedback_table, split_fresh, write_feedback

    if not isinstance(cfg, RetrainConfig):
        cfg = typed(RetrainConfig, cfg)
    validate(cfg)
    base = Path(cfg.base_path).absolute()
    decisions = Path(cfg.decisions) if cfg.decisions else base / "decisions.jsonl"
    go, why = triggered(cfg, decisions)
    if not go:
        return {"decision": "no trigger", "reason": why}
    version, chosen = serving_version(cfg)
    serving_path = base / str(version)
    card = read_card(serving_path)
    if "config" not in card or (card.get("task") not in (None, "tabular")):
        raise ValueError(f"base_path={cfg.base_path!r}: version {version} is a "
                         f"{card.get('task')!r} model; retraining from feedback supports the "
                         f"tabular task (data.feedback)")
    from mlsd_jax.export.bundle import load_bundle

    inputs = list(load_bundle(serving_path).signatures["serving_default"].inputs)
    workdir = Path(workdir or cfg.workdir or "outputs/retrain").absolute()
    feedback = workdir / "feedback.parquet"
    ccfg = candidate_config(card["config"], feedback, list(cfg.overrides), workdir / "candidate")

    table = feedback_table(cfg.log_dir, read_labels(cfg.labels), signature_inputs=inputs,
                           since=cfg.since, until=cfg.until, model=cfg.model)
    if table.n_rows <= cfg.eval_window:
        raise UserError(f"eval_window={cfg.eval_window}: the log has only {table.n_rows} "
                        f"labelled rows; the window must leave rows to train on")
    train, fresh = split_fresh(table, cfg.eval_window)
    y = np.asarray(fresh.columns["label"], np.float64)
    if len(np.unique(y)) < 2:
        raise UserError(f"eval_window={cfg.eval_window}: the freshest labelled rows hold one "
                        f"class only; ROC-AUC needs both")
    workdir.mkdir(parents=True, exist_ok=True)
    write_feedback(train, feedback)

    t0 = time.time()
    results = run_experiment(ccfg, workdir / "candidate")
    export = results["paths"]["export"]
    if not export:
        raise UserError("overrides: the candidate run wrote no export (export.enabled=false?)")
    train_s = time.time() - t0

    fresh_inputs = fresh.inputs_of()
    serving_auc, _ = score(serving_path, fresh_inputs, y, cfg.prediction)
    cand_auc, _ = score(Path(export), fresh_inputs, y, cfg.prediction)
    better = cand_auc is not None and serving_auc is not None and \
        cand_auc >= serving_auc + cfg.min_delta
    if better:
        new_version, labels = promote(cfg, Path(export))
        reason = (f"promoted: candidate {METRIC} {cand_auc:.4f} >= serving {serving_auc:.4f} "
                  f"+ min_delta {cfg.min_delta:g}")
    else:
        new_version, labels = None, read_version_labels(base)
        reason = (f"refused: candidate {METRIC} {cand_auc:.4f} < serving {serving_auc:.4f} "
                  f"+ min_delta {cfg.min_delta:g}" if cand_auc is not None else
                  "refused: the candidate's score is undefined")
    decision = {
        "time": time.time(),
        "decision": "promote" if better else "refuse",
        "reason": reason,
        "trigger": why,
        "metric": METRIC,
        "metric_source": "mlsd_jax.monitoring.estimate.roc_auc (equals sklearn roc_auc_score) "
                         f"of output {cfg.prediction!r}",
        "scores": {"serving": serving_auc, "candidate": cand_auc},
        "min_delta": cfg.min_delta,
        "eval_window": {**_bounds(fresh), "requested": cfg.eval_window,
                        "positive_rate": float(y.mean())},
        "train_feedback": {**_bounds(train), "file": str(feedback)},
        "log": {"dir": str(cfg.log_dir), "labelled_rows": table.n_rows,
                "unlabelled_rows_dropped": table.n_unlabelled, "rows": table.n_logged},
        "serving": {"version": version, "chosen_by": chosen, "path": str(serving_path)},
        "candidate": {"export": str(export), "workdir": str(workdir / "candidate"),
                      "overrides": list(cfg.overrides), "steps_run": results["steps_run"],
                      "valid_metrics": {k: v for k, v in results["metrics"].items()
                                        if k.startswith("valid/")},
                      "train_s": train_s},
        "promoted": {"version": new_version, "label": cfg.promote_label if better else None,
                     "path": str(base / str(new_version)) if better else None},
        "labels": labels,
    }
    text = json.dumps(decision, indent=2, default=float)
    (workdir / "decision.json").write_text(text)
    decisions.parent.mkdir(parents=True, exist_ok=True)
    with open(decisions, "a") as f:
        f.write(json.dumps(decision, default=float) + "\n")
    return decision


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="retrain")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        conf = typed(RetrainConfig, cfg)
        workdir = conf.workdir or HydraConfig.get().runtime.output_dir
        decision = run(conf, workdir)
    except USER_ERRORS as e:
        exit_for_user_error(e)
    if decision["decision"] == "no trigger":
        print(decision["reason"], flush=True)
        return
    brief = {k: decision[k] for k in ("decision", "reason", "scores", "eval_window",
                                      "serving", "promoted")}
    print(json.dumps(brief, indent=2, default=float), flush=True)


if __name__ == "__main__":
    main()
