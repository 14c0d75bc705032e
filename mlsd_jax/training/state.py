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

    @property
    def variables(self) -> dict:
        """What ``model.apply`` takes: ``{"params": ..., **model_state}``."""
        return {"params": self.params, **self.model_state}
