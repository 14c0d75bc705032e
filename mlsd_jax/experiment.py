"""Runs one experiment from a composed config: data -> train -> evaluate -> export -> results.

Used by ``python -m experiments.run`` (Hydra) and by notebooks (Hydra's compose API).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from mlsd_jax import sharding as shd
from mlsd_jax import tasks
from mlsd_jax.training.loggers import make_logger
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import Trainer, TrainerConfig, metric_key


def config_dir() -> str:
    """Absolute path of the packaged Hydra configs (repo checkout or installed package)."""
    repo = Path(__file__).resolve().parents[1] / "configs"
    if (repo / "config.yaml").exists():
        return str(repo)
    from importlib import resources

    return str(resources.files("mlsd_jax._configs"))


def typed(schema, node) -> Any:
    """Validates a config node against a dataclass schema: unknown keys and bad types fail here."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    return OmegaConf.to_object(merged)


@dataclasses.dataclass
class ExportConfig:
    enabled: bool = True
    dir: str = "export"   # relative to the run directory
    check: bool = True    # reload in TensorFlow and compare with JAX


@dataclasses.dataclass
class DistributedConfig:
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: list[int] | None = None


def apply_debug(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """``debug=NAME`` overlays: merges ``cfg.debug`` then ``cfg.task.debug`` over the config.

    Merged in code, after composition, so the overlay wins over the task's own settings (a
    Hydra defaults entry would lose to the ``+task`` appended after it). Values set on the
    command line (``overrides``: ``key=value`` strings) win over the overlay.
    """
    overlay = cfg.get("debug")
    if not overlay:
        return cfg
    task_overlay = _known_keys(cfg, (cfg.get("task") or {}).get("debug") or {})
    explicit = {}
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item or "/" in key or "@" in key:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, DictConfig):
            explicit[key] = value
    merged = OmegaConf.merge(cfg, overlay, task_overlay)
    for key, value in explicit.items():
        OmegaConf.update(merged, key, value, force_add=True)
    with open_dict(merged):
        merged.debug = {**OmegaConf.to_container(overlay, resolve=True), "applied": True}
    return merged


def _known_keys(cfg, overlay):
    """The part of ``overlay`` whose keys exist in ``cfg`` (a task's debug node shrinks the
    model it was written for; another model selected on the command line keeps its own)."""
    out = {}
    for key, value in (overlay.items() if overlay else []):
        if key not in cfg:
            continue
        if OmegaConf.is_dict(value) and OmegaConf.is_dict(cfg[key]):
            out[key] = _known_keys(cfg[key], value)
        else:
            out[key] = value
    return out


def _command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def maybe_initialize_distributed(cfg) -> None:
    """Multi-host: ``jax.distributed.initialize`` when a coordinator is configured."""
    dist = typed(DistributedConfig, cfg.get("distributed") or {})
    if dist.coordinator_address:
        jax.distributed.initialize(dist.coordinator_address, dist.num_processes, dist.process_id,
                                   local_device_ids=dist.local_device_ids)


def run(cfg: DictConfig, workdir: str | Path | None = None) -> dict[str, Any]:
    """Trains, evaluates and exports; writes ``results.json`` into ``workdir``.

    With an export, a task's ``reference_inputs`` become the reference profile saved beside
    the model card (:func:`save_reference_profile`); ``results["reference_profile"]`` says what
    was saved, or why nothing was.

    ``workdir`` defaults to ``cfg.workdir`` (Hydra's run directory under ``experiments.run``).
    """
    t_start = time.perf_counter()
    # Hydra sets the root logger to INFO; orbax's per-save absl INFO lines would drown the run.
    logging.getLogger("absl").setLevel(logging.WARNING)
    maybe_initialize_distributed(cfg)
    workdir = Path(workdir or cfg.get("workdir") or "outputs/run").absolute()
    if cfg.get("debug") and not cfg.debug.get("applied"):
        cfg = apply_debug(cfg, _command_line_overrides())
    cfg = cfg.copy()
    with open_dict(cfg):  # composed outside a Hydra run, ${hydra:...} has nothing to resolve
        cfg.workdir = str(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    trainer_cfg = typed(TrainerConfig, cfg.trainer)
    optim_cfg = typed(OptimConfig, cfg.optim)
    export_cfg = typed(ExportConfig, cfg.get("export") or {})
    mesh_cfg = OmegaConf.to_container(cfg.mesh, resolve=True)
    rules = mesh_cfg.pop("rules", None) or shd.DEFAULT_RULES
    mesh = shd.make_mesh(mesh_cfg)

    t = time.perf_counter()
    task = tasks.build(cfg)
    data_s = time.perf_counter() - t
    config = OmegaConf.to_container(cfg, resolve=True)
    logger = make_logger(config.get("logger"), workdir, config)
    try:
        trainer = Trainer(task, trainer_cfg, optim_cfg, mesh, rules)
        fit = trainer.fit(workdir, logger)
    finally:
        logger.close()
    post_fit = {}
    if task.post_fit is not None:  # e.g. decision thresholds from validation into the consts
        state, post_fit = task.post_fit(trainer, fit.state)
        check_same_structure(fit.state.consts, state.consts)
        fit = dataclasses.replace(fit, state=state)

    export_path, export_s = None, 0.0
    if export_cfg.enabled and jax.process_index() == 0:
        from mlsd_jax.export import export_model

        t = time.perf_counter()
        export_path = export_model(
            task, fit.state, workdir / export_cfg.dir, check=export_cfg.check, config=config,
            card={"metrics": fit.metrics, "best_step": fit.best_step, "data": dict(task.info),
                  "post_fit": post_fit,
                  "target_metric": f"{trainer_cfg.eval_split}/{task.target_metric}"})
        export_s = time.perf_counter() - t
    profile_info: dict[str, Any] = {
        "saved": False, "reason": "export.enabled=false" if not export_cfg.enabled
        else "the export and its profile are written by process 0"}
    if export_path is not None:
        if task.reference_inputs is None:
            profile_info = {"saved": False,
                            "reason": f"task {task.name!r} defines no reference_inputs"}
        else:
            t = time.perf_counter()
            profile_info = save_reference_profile(task, export_path)
            profile_info["seconds"] = time.perf_counter() - t

    results = {
        "task": task.name,
        "metrics": fit.metrics,
        "best_step": fit.best_step,
        "objective": {"name": metric_key(trainer_cfg.eval_split, task.target_metric),
                      "mode": task.target_mode, "value": fit.best_metric},
        "steps_run": fit.steps_run,
        "stopped_early": fit.stopped_early,
        "post_fit": post_fit,
        "reference_profile": profile_info,
        "timings": {"data_s": data_s, **fit.timings, "export_s": export_s,
                    "total_s": time.perf_counter() - t_start},
        "paths": {"workdir": str(workdir), "checkpoints": fit.checkpoint_dir,
                  "best_checkpoint": fit.best_checkpoint, "metrics_log": str(workdir / "metrics.jsonl"),
                  "export": str(export_path) if export_path else None},
        "data": dict(task.info),
        "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                        "devices": jax.device_count(), "processes": jax.process_count(),
                        "mesh": {k: int(v) for k, v in mesh.shape.items()},
                        "python": platform.python_version(),
                        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        "config": config,
    }
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        print_results(results)
    return results


PROFILE_FILE = "profile.json"
REFERENCE_SCORES_FILE = "reference_scores.npz"
REFERENCE_LABEL = "label"
MAX_REFERENCE_SCORES = 50_000


def _profile_columns(tensors: Mapping[str, np.ndarray], n: int, what: str, skipped: dict,
                     max_width: int = 32) -> dict[str, np.ndarray]:
    """Row columns as the prediction log's frame names them: ``(n,)`` / ``(n, 1)`` -> ``name``,
    ``(n, k)`` with k <= ``max_width`` -> ``name[0]`` .. ``name[k-1]``; others are skipped."""
    out = {}
    for name, v in tensors.items():
        v = np.asarray(v)
        if v.ndim == 0 or v.shape[0] != n:
            skipped[name] = f"{what} of shape {v.shape} is not one value per row"
        elif v.ndim == 1 or (v.ndim == 2 and v.shape[1] == 1):
            out[name] = v.reshape(n)
        elif v.ndim == 2 and v.shape[1] <= max_width:
            out.update({f"{name}[{i}]": v[:, i] for i in range(v.shape[1])})
        else:
            skipped[name] = f"{what} of shape {v.shape[1:]} per row (more than {max_width} values)"
    return out


TEXT_DISTINCT_FRACTION = 0.5


def _is_text(v: np.ndarray) -> bool:
    return v.dtype.kind in "OUS"


def reference_columns(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                      labels: np.ndarray | None = None, *, task: str = "task",
                      max_width: int = 32) -> tuple[dict, dict, dict, dict]:
    """The profile's columns from raw inputs, outputs and labels of the same rows.

    Returns ``(columns, kinds, skipped, layout)``; see :func:`save_reference_profile` for the
    rules. ``layout``: ``{"row": "request row" | "document", "derived": {column: rule},
    "inputs": [...], "outputs": [...]}``.
    """
    from mlsd_jax.monitoring.windows import list_lengths, text_lengths

    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    outputs = {k: np.asarray(v) for k, v in outputs.items()}
    n = len(next(iter(inputs.values())))
    skipped: dict[str, str] = {}
    derived: dict[str, str] = {}
    kinds: dict[str, str] = {}
    in_cols: dict[str, np.ndarray] = {}
    # Ranking lists: a [rows, list, k] numeric input with a boolean [rows, list] mask becomes
    # one row per unmasked document.
    docs = [k for k, v in inputs.items() if v.ndim == 3 and v.dtype.kind in "iuf"]
    masks = [m for m, v in inputs.items() if v.dtype.kind == "b" and v.ndim == 2 and docs
             and v.shape == inputs[docs[0]].shape[:2]]
    if docs and masks:
        keep = inputs[masks[0]]
        for k in docs:
            x = inputs[k][keep]
            in_cols.update({f"{k}[{j}]": x[:, j] for j in range(x.shape[1])})
        for k, v in inputs.items():
            if k in docs or k == masks[0]:
                continue
            if v.shape == keep.shape and v.dtype.kind in "biuf":
                in_cols[k] = v[keep]
            else:
                skipped[k] = f"input of shape {v.shape[1:]} is not one value per document"
        skipped[masks[0]] = "the document mask: only unmasked documents are profiled"
        kinds.update({k: "numeric" for k in in_cols})
        out_cols = {}
        for k, v in outputs.items():
            name = f"{k}_output" if k in inputs else k
            if v.dtype.kind in "biuf" and v.shape == keep.shape:
                out_cols[name] = v[keep].astype(np.float64)
            else:
                skipped[k] = f"output of shape {v.shape[1:]} is not one value per document"
        columns = {**in_cols, **out_cols}
        kinds.update({k: "numeric" for k in out_cols})
        if labels is not None:
            y = np.asarray(labels)
            if y.shape != keep.shape:
                raise ValueError(f"task {task!r}: reference labels have shape {y.shape}; "
                                 f"expected the document mask's {keep.shape}")
            columns[REFERENCE_LABEL] = y[keep]
            kinds[REFERENCE_LABEL] = _label_kind(y[keep])
        return columns, kinds, skipped, {"row": "document", "derived": derived,
                                         "inputs": list(in_cols), "outputs": list(out_cols)}
    lists = {}  # [rows, width] string lists (padded with ""): profiled by their length
    for k, v in inputs.items():
        if v.ndim == 0 or v.shape[0] != n:
            skipped[k] = f"input of shape {v.shape} is not one value per row"
        elif _is_text(v) and (v.ndim == 1 or (v.ndim == 2 and v.shape[1] == 1)):
            x = v.reshape(n)
            present = [s for s in x if isinstance(s, (str, bytes))]
            distinct = len(set(present)) / max(len(present), 1)
            if distinct > TEXT_DISTINCT_FRACTION:
                in_cols[f"{k}.length"] = text_lengths(x)
                kinds[f"{k}.length"] = "numeric"
                derived[f"{k}.length"] = (f"characters of {k!r} ({distinct:.0%} of its reference "
                                          f"values are distinct: free text or ids)")
            else:
                in_cols[k] = x
                kinds[k] = "categorical"
        elif _is_text(v) and v.ndim == 2:
            in_cols[f"{k}.items"] = list_lengths(v)
            kinds[f"{k}.items"] = "numeric"
            derived[f"{k}.items"] = f"non-empty items of the list {k!r} ('' pads)"
            lists[k] = v.shape
        else:
            got = _profile_columns({k: v}, n, "input", skipped, max_width)
            in_cols.update(got)
            kinds.update({c: "numeric" for c in got})
    out_cols = {}
    for k, v in outputs.items():
        name = f"{k}_output" if k in inputs else k
        if v.dtype.kind not in "biuf":
            skipped[k] = "string output"
        elif v.ndim == 2 and v.shape[1] > 1 and v.shape in lists.values():
            skipped[k] = ("per-item output of a padded list input (one value per list item, "
                          "not per row)")
        else:
            out_cols.update(_profile_columns({name: v}, n, "output", skipped, max_width))
    kinds.update({k: "numeric" for k in out_cols})
    columns = {**in_cols, **out_cols}
    if labels is not None:
        y = np.asarray(labels)
        if y.shape[:1] != (n,) or y.ndim != 1:
            raise ValueError(f"task {task!r}: reference labels have shape {y.shape}; "
                             f"expected ({n},)")
        columns[REFERENCE_LABEL] = y
        kinds[REFERENCE_LABEL] = _label_kind(y)
    return columns, kinds, skipped, {"row": "request row", "derived": derived,
                                     "inputs": list(in_cols), "outputs": list(out_cols)}


def _label_kind(y: np.ndarray) -> str:
    """Categorical when the labels are booleans / strings or at most 20 integer values."""
    if y.dtype.kind in "OUSb":
        return "categorical"
    integral = y.dtype.kind in "biu" or (y.dtype.kind == "f" and
                                         bool(np.all(np.isnan(y) | (y == np.round(y)))))
    values = y[~np.isnan(y)] if y.dtype.kind == "f" else y
    return "categorical" if integral and len(np.unique(values)) <= 20 else "numeric"


def save_reference_profile(task, export_path: str | Path, *, batch_size: int = 4096,
                           seed: int = 0) -> dict[str, Any]:
    """Scores ``task.reference_inputs()`` with the exported bundle and writes the reference
    profile beside the model card (``assets.extra/profile.json``).

    Columns (:func:`reference_columns`), one profile row per request row:

    * inputs: numbers as numeric columns (``[rows, k]`` with k <= 32 as ``name[0]`` ..
      ``name[k-1]``); a string input is categorical unless more than half of its present
      reference values are distinct (free text such as spam or moderation messages, or ids
      that are nearly all distinct): then it is profiled as the derived numeric column
      ``<name>.length`` (characters per value; a missing value is missing), since as categories
      every window would look drifted. ``mlsd_jax.monitoring.windows`` derives the same column
      from logged strings when a profile holds it
      (:func:`mlsd_jax.monitoring.windows.text_lengths`). A ``[rows, width]``
      string list padded with ``""`` (id histories, candidate ids, news titles) is profiled as
      ``<name>.items``, its non-empty items per row
      (:func:`mlsd_jax.monitoring.windows.list_lengths`), the same on the
      monitoring side from the logged ``name[0]`` .. ``name[width-1]`` columns;
    * ranking lists: a numeric ``[rows, list, k]`` input with a boolean ``[rows, list]`` mask
      (the ranking task) makes a per-document profile instead: one row per unmasked document,
      ``features[0]`` .. ``features[k-1]``, the ``[rows, list]`` outputs (``scores``) and graded
      labels of the same documents, masked padding dropped (the card's ``row`` is
      ``"document"``; the prediction log's frame has one row per list, so
      ``experiments.monitor`` does not compare these columns: check documents with
      :func:`mlsd_jax.monitoring.drift.check` on the same flattening);
    * outputs: the numeric ones (an output named like an input becomes ``<name>_output``, as in
      the prediction log's frame); string outputs, outputs wider than 32 values per row and
      per-item outputs of a padded list input (recommendation or news scores per candidate) are
      skipped, each with its reason under ``skipped``;
    * labels (``label``): one per row (per document for ranking), categorical when they are
      booleans or take at most 20 integer values.

    With labels, ``reference_scores.npz`` holds the numeric profiled outputs and the labels of
    at most 50,000 profile rows (a seeded sample), what ``experiments.monitor`` fits its
    performance estimator (CBPE) on. The card gains a ``reference_profile`` entry (file,
    schema version, ``rows`` profiled, ``requests`` scored, ``row`` unit, column roles,
    ``derived`` columns and their rule, ``skipped`` inputs / outputs and why), which is
    returned.
    """
    from mlsd_jax.export.bundle import CARD, load_bundle
    from mlsd_jax.monitoring.profile import Profile

    extra = Path(export_path) / "assets.extra"
    bundle = load_bundle(export_path)
    sig = bundle.signatures["serving_default"]
    raw = dict(task.reference_inputs())
    if REFERENCE_LABEL in sig.inputs:
        raise ValueError(f"task {task.name!r}: reference_inputs key {REFERENCE_LABEL!r} holds "
                         f"labels, but it is also a serving_default input")
    y = raw.pop(REFERENCE_LABEL, None)
    absent = sorted(set(sig.inputs) - set(raw))
    if absent:
        raise KeyError(f"task {task.name!r}: reference_inputs lacks serving_default inputs "
                       f"{absent} (it has {sorted(raw)})")
    inputs = {k: np.asarray(raw[k]) for k in sig.inputs}
    n = len(next(iter(inputs.values())))
    parts = []
    for i in range(0, n, batch_size):  # the last batch padded to the same shape: one compile
        idx = np.arange(i, i + batch_size) % n if n > batch_size else np.arange(n)
        got = bundle.predict({k: v[idx] for k, v in inputs.items()}, "serving_default")
        parts.append({k: np.asarray(v)[:min(batch_size, n - i)] for k, v in got.items()})
    outputs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    columns, kinds, skipped, layout = reference_columns(inputs, outputs, y, task=task.name)
    in_cols, out_cols = layout["inputs"], layout["outputs"]
    label = REFERENCE_LABEL if y is not None else None
    if label is not None and layout["row"] == "document":
        y = columns[label]
    profile = Profile.fit(columns, kinds, seed=seed)
    (extra / PROFILE_FILE).write_text(profile.to_json())
    info: dict[str, Any] = {
        "saved": True, "file": PROFILE_FILE, "schema_version": profile.schema_version,
        "rows": int(len(columns[next(iter(columns))])), "row": layout["row"],
        "requests": int(n), "inputs": list(in_cols), "outputs": list(out_cols),
        "derived": layout["derived"], "label": label, "skipped": skipped,
        "reference_scores": None}
    if label is not None:
        rows = info["rows"]
        keep = np.arange(rows)
        if rows > MAX_REFERENCE_SCORES:
            keep = np.sort(np.random.default_rng(seed).choice(rows, MAX_REFERENCE_SCORES,
                                                              replace=False))
        arrays = {k: np.asarray(columns[k])[keep] for k in out_cols}
        np.savez(extra / REFERENCE_SCORES_FILE, **arrays, **{label: y[keep]})
        info["reference_scores"] = {"file": REFERENCE_SCORES_FILE, "rows": int(len(keep)),
                                    "columns": [*arrays, label]}
    card_path = extra / CARD
    card = json.loads(card_path.read_text())
    card["reference_profile"] = {k: v for k, v in info.items() if k != "saved"}
    tmp = card_path.with_name(card_path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2, default=str))
    os.replace(tmp, card_path)
    return info


def check_same_structure(before, after) -> None:
    """A task's ``post_fit`` may change const values, not their structure, shapes or dtypes
    (the jitted functions and checkpoints are built for the first)."""
    from mlsd_jax.training.checkpoint import state_signature

    if state_signature(before) != state_signature(after):
        raise ValueError("task.post_fit changed the structure, shapes or dtypes of the consts; "
                         "it may only change their values")


def print_results(results: dict[str, Any]) -> None:
    metrics = results["metrics"]
    width = max(len(k) for k in metrics) if metrics else 10
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    t = results["timings"]
    lines.append(f"\nsteps {results['steps_run']} (best at {results['best_step']}), "
                 f"train {t.get('train_s', 0):.1f}s, total {t['total_s']:.1f}s")
    for k, v in results["paths"].items():
        if v:
            lines.append(f"{k:<16} {v}")
    print("\n".join(lines), flush=True)
