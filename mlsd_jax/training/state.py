"""Train state: a pytree of arrays (step, params, optimizer state, fitted constants)."""
from __future__ import annotations

from typing import Any

import optax
from flax import struct


@struct.dataclass
class TrainState:
    step: Any
    params: Any
    opt_state: Any
    consts: Any  # fitted feature transforms: saved and exported, never trained
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
