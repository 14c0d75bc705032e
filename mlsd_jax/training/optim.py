"""Optimizers from config: optax transform + LR schedule (warmup then cosine) + clipping."""
from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass
class OptimConfig:
    name: str = "adamw"          # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.9        # sgd only
    schedule: str = "cosine"     # cosine | constant
    warmup_steps: int = 50
    end_lr_factor: float = 0.01  # final lr = lr * end_lr_factor (cosine)
    clip_norm: float | None = 1.0


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    if cfg.schedule == "constant":
        if cfg.warmup_steps:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), optax.constant_schedule(cfg.lr)],
                [cfg.warmup_steps])
        return optax.constant_schedule(cfg.lr)
    if cfg.schedule == "cosine":
        warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
            end_value=cfg.lr * cfg.end_lr_factor)
    raise ValueError(f"optim.schedule={cfg.schedule!r}; valid choices: 'cosine', 'constant'")


def make_optimizer(cfg: OptimConfig, total_steps: int):
    """Returns ``(tx, schedule)``."""
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        core = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
    elif cfg.name == "sgd":
        core = optax.sgd(schedule, momentum=cfg.momentum)
    else:
        raise ValueError(f"optim.name={cfg.name!r}; valid choices: 'adamw', 'adam', 'sgd'")
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    return optax.chain(*parts, core), schedule
