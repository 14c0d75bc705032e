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


def save_reference_profile(task, export_path: str | Path, *, batch_size: int = 4096,
                           seed: int = 0) -> dict[str, Any]:
    """Scores ``task.reference_inputs()`` with the exported bundle and writes the reference
    profile beside the model card (``assets.extra/profile.json``).

    Columns: the ``serving_default`` inputs, the numeric outputs (an output named like an
    input becomes ``<name>_output``, as in the prediction log's frame; string outputs and
    outputs wider than 32 values per row are skipped and listed) and the labels (``label``,
    categorical when they take at most 20 integer values). Kinds: string inputs categorical,
    other inputs and outputs numeric. With labels, ``reference_scores.npz`` holds the numeric
    1-d outputs and the labels of at most 50,000 rows (a seeded sample), what
    ``experiments.monitor`` fits its performance estimator (CBPE) on. The card gains a
    ``reference_profile`` entry (file, schema version, rows, column roles), which is returned.
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
    skipped: dict[str, str] = {}
    in_cols = _profile_columns(inputs, n, "input", skipped)
    numeric_out = {(f"{k}_output" if k in sig.inputs else k): v for k, v in outputs.items()
                   if np.asarray(v).dtype.kind in "biuf"}
    skipped.update({k: "string output" for k, v in outputs.items()
                    if np.asarray(v).dtype.kind not in "biuf"})
    out_cols = _profile_columns(numeric_out, n, "output", skipped)
    kinds = {k: "categorical" if np.asarray(v).dtype.kind in "OUS" else "numeric"
             for k, v in in_cols.items()}
    kinds.update({k: "numeric" for k in out_cols})
    columns = {**in_cols, **out_cols}
    label = None
    if y is not None:
        y = np.asarray(y)
        if y.shape[:1] != (n,) or y.ndim != 1:
            raise ValueError(f"task {task.name!r}: reference labels have shape {y.shape}; "
                             f"expected ({n},)")
        label = REFERENCE_LABEL
        integral = y.dtype.kind in "biu" or (y.dtype.kind == "f" and np.all(np.isnan(y) | (y == np.round(y))))
        columns[label] = y
        kinds[label] = ("categorical" if y.dtype.kind in "OUSb" or
                        (integral and len(np.unique(y[~np.isnan(y)] if y.dtype.kind == "f" else y)) <= 20)
                        else "numeric")
    profile = Profile.fit(columns, kinds, seed=seed)
    (extra / PROFILE_FILE).write_text(profile.to_json())
    info: dict[str, Any] = {
        "saved": True, "file": PROFILE_FILE, "schema_version": profile.schema_version,
        "rows": int(n), "inputs": list(in_cols), "outputs": list(out_cols), "label": label,
        "skipped": skipped, "reference_scores": None}
    if label is not None:
        keep = np.arange(n)
        if n > MAX_REFERENCE_SCORES:
            keep = np.sort(np.random.default_rng(seed).choice(n, MAX_REFERENCE_SCORES, replace=False))
        arrays = {k: np.asarray(v)[keep] for k, v in out_cols.items()}
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
