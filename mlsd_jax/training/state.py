"""Train state: a pytree of arrays (step, params, model state, optimizer state, fitted constants)."""
from __future__ import annotations

from typing import Any

import optax
from flax import struct


@struct.dataclass
class TrainState:
    step: Any
    params: Any
    model_state: Any  # non-trained model collections (BatchNorm batch_stats, counters): {} if none
    opt_state: Any
    consts: Any  # fitted feature transforms: saved and exported, never trained
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    # exponential moving average of params (optim.ema_decay), or None: when set, evaluation,
    # checkpoint selection and export read it instead of the raw params
    ema_params: Any = None

    @property
    def variables(self) -> dict:
        """What ``model.apply`` takes for inference: ``{"params": ..., **model_state}`` (the
        moving average of the params when ``optim.ema_decay`` keeps one)."""
        params = self.params if self.ema_params is None else self.ema_params
        return {"params": params, **self.model_state}
