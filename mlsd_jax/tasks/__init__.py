"""Task builders: ``build(cfg)`` assembles the :class:`Task` named by ``cfg.task.name``."""
from __future__ import annotations

from mlsd_jax.tasks.base import Task

BUILDERS = {
    "ranking": "mlsd_jax.tasks.ranking:build_ranking_task",
}


def build(cfg) -> Task:
    if "task" not in cfg or cfg["task"] is None:
        raise ValueError(f"no task selected: run with +task=NAME, NAME one of {sorted(BUILDERS)}")
    name = cfg["task"]["name"]
    if name not in BUILDERS:
        raise ValueError(f"unknown task {name!r}; valid choices: {sorted(BUILDERS)}")
    import importlib

    module, fn = BUILDERS[name].split(":")
    return getattr(importlib.import_module(module), fn)(cfg)


__all__ = ["BUILDERS", "Task", "build"]
