"""orbax checkpoints: the last N for resume, and the best by a validation metric.

Restores take an abstract state whose leaves carry the *target* shardings, so a checkpoint
written on one device layout restores onto any other (8 devices -> 2 -> 1).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from mlsd_jax.errors import CheckpointError

RUN_FILE = "run.json"


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)


class Checkpoints:
    """``latest/`` keeps the last ``keep`` states; ``best/`` keeps the best one by ``metric``."""

    def __init__(self, directory: str | Path, *, keep: int = 2, metric: str | None = None,
                 mode: str = "max"):
        self.directory = Path(directory).absolute()
        self.metric = metric
        opts = dict(create=True, enable_async_checkpointing=False)
        self.latest = ocp.CheckpointManager(
            self.directory / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts))
        self.best = ocp.CheckpointManager(
            self.directory / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=(lambda m: m[metric]) if metric else None,
                best_mode=mode, **opts))

    @staticmethod
    def _save(manager, step: int, state, meta: dict, metrics=None) -> None:
        manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), metrics=metrics)
        manager.wait_until_finished()

    def save(self, step: int, state, meta: dict) -> None:
        self._save(self.latest, step, state, meta)

    def save_best(self, step: int, state, meta: dict, metrics: dict) -> None:
        self._save(self.best, step, state, meta, metrics={self.metric: float(metrics[self.metric])})

    @staticmethod
    def _restore(manager, step, abstract_state) -> tuple[Any, dict]:
        out = manager.restore(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def _restore_intact(self, manager, steps, abstract_state):
        """Restores the first readable step of ``steps``; a broken one is reported and skipped."""
        for step in steps:
            try:
                return self._restore(manager, step, abstract_state)
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                tqdm.write(f"checkpoint {manager.directory / str(step)} is unreadable "
                           f"({type(e).__name__}: {first}); trying the previous step")
        if steps:
            raise CheckpointError(
                f"no readable checkpoint in {manager.directory} (steps {list(steps)} are all "
                f"damaged); delete that folder or run in a new hydra.run.dir")
        return None

    def restore_latest(self, abstract_state):
        """The newest intact ``latest/`` step (falling back over damaged ones), or ``None``."""
        steps = sorted(self.latest.all_steps(), reverse=True)
        return self._restore_intact(self.latest, steps, abstract_state)

    def best_step(self) -> int | None:
        return self.best.best_step() if self.metric else self.best.latest_step()

    def restore_best(self, abstract_state):
        step = self.best_step()
        return None if step is None else self._restore_intact(self.best, [step], abstract_state)

    def close(self) -> None:
        self.latest.close()
        self.best.close()

    # ------------------------------------------------------------------- which run owns the dir
    def check_owner(self, signature: dict, describe: str) -> None:
        """Refuses to resume checkpoints written for another model or config.

        ``signature`` describes what the checkpoints must fit (task, parameter shapes, the
        fitted constants' fingerprint...); the first save records it in ``run.json``. Keys an
        older ``run.json`` lacks are not compared.
        """
        path = self.directory / RUN_FILE
        if path.exists():
            old = json.loads(path.read_text())
            recorded = old.get("signature") or {}
            differ = sorted(k for k in recorded if recorded[k] != signature.get(k))
            if differ:
                why = ("the fitted features / constants differ: the data or feature settings "
                       "changed" if differ == ["consts"] else
                       f"{old.get('describe', 'unknown model')}, not {describe}")
                raise CheckpointError(
                    f"{self.directory.parent} holds checkpoints of another run ({why}). "
                    f"Use a new hydra.run.dir, or trainer.resume=false to move them aside and "
                    f"start over here.")
        elif self.latest.latest_step() is not None:
            return  # written before run.json existed: nothing to compare with
        self.directory.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"signature": signature, "describe": describe}, indent=1))


def state_signature(abstract_state) -> dict:
    """Paths, shapes and dtypes of a state: what a checkpoint must match to be restored."""
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    return {jax.tree_util.keystr(p): [list(x.shape), str(np.dtype(x.dtype))] for p, x in leaves}


def consts_fingerprint(consts) -> str:
    """sha256 of the fitted constants (every leaf's path, shape, dtype and bytes): a resumed
    run must have fitted the same feature transforms from the same data."""
    import hashlib

    h = hashlib.sha256()
    for path, x in jax.tree_util.tree_flatten_with_path(jax.device_get(consts))[0]:
        x = np.ascontiguousarray(np.asarray(x))
        h.update(f"{jax.tree_util.keystr(path)}{x.shape}{x.dtype}".encode())
        h.update(x.tobytes())
    return h.hexdigest()


def move_aside(directory: str | Path) -> Path | None:
    """Renames an existing checkpoint folder to ``<name>.old-<time>`` (nothing is deleted)."""
    directory = Path(directory)
    if not directory.exists():
        return None
    target = directory.with_name(f"{directory.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    directory.rename(target)
    return target
