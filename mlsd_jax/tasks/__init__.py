"""Task builders: ``build(cfg)`` assembles the :class:`Task` named by ``cfg.task.name``."""
from __future__ import annotations

import dataclasses

from mlsd_jax.tasks.base import Task

BUILDERS = {
    "ranking": "mlsd_jax.tasks.ranking:build_ranking_task",
    "tabular": "mlsd_jax.tasks.tabular:build_tabular_task",
    "recommendation": "mlsd_jax.tasks.recommendation:build_recommendation_task",
    "ctr": "mlsd_jax.tasks.ctr:build_ctr_task",
    "news_feed": "mlsd_jax.tasks.news_feed:build_news_feed_task",
    "spam": "mlsd_jax.tasks.spam:build_spam_task",
    "moderation": "mlsd_jax.tasks.moderation:build_moderation_task",
    "fraud": "mlsd_jax.tasks.fraud:build_fraud_task",
    "image": "mlsd_jax.tasks.image:build_image_task",
    "video": "mlsd_jax.tasks.video:build_video_task",
}


def build(cfg) -> Task:
    if "task" not in cfg or cfg["task"] is None:
        raise ValueError(f"no task selected: run with +task=NAME, NAME one of {sorted(BUILDERS)}")
    name = cfg["task"]["name"]
    if name not in BUILDERS:
        raise ValueError(f"unknown task {name!r}; valid choices: {sorted(BUILDERS)}")
    import importlib

    module, fn = BUILDERS[name].split(":")
    task = getattr(importlib.import_module(module), fn)(cfg)
    return dataclasses.replace(task, config=plain_config(cfg))


def plain_config(cfg) -> dict:
    """The composed config as plain data (interpolations resolved; run-dir keys dropped)."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(cfg):
        return dict(cfg)
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("workdir", "hydra")])
    return OmegaConf.to_container(cfg, resolve=True)


__all__ = ["BUILDERS", "Task", "build"]
