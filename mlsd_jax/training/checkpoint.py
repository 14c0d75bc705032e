"""orbax checkpoints: the last N for resume, and the best by a validation metric.

Restores take an abstract state whose leaves carry the *target* shardings, so a checkpoint
written on one device layout restores onto any other (8 devices -> 2 -> 1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


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

    def restore_latest(self, abstract_state):
        step = self.latest_step()
        return None if step is None else self._restore(self.latest, step, abstract_state)

    def best_step(self) -> int | None:
        return self.best.best_step() if self.metric else self.best.latest_step()

    def restore_best(self, abstract_state):
        step = self.best_step()
        return None if step is None else self._restore(self.best, step, abstract_state)

    def close(self) -> None:
        self.latest.close()
        self.best.close()
