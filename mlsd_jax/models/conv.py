"""Convolution layers whose parameters carry logical axis names (see ``mlsd_jax.sharding``).

Inputs are channels-last, ``[batch, *spatial, channels]``. A kernel of ``n`` spatial dims is named
by its last ``n`` of ``("conv_t", "conv_h", "conv_w")`` then ``("conv_in", "conv_out")``, e.g. a
2-D kernel ``("conv_h", "conv_w", "conv_in", "conv_out")``. The default rules replicate all of
them; mapping ``conv_out`` to ``model`` splits output channels over the model axis. Biases and
BatchNorm scale/bias are named ``("conv_out",)``; BatchNorm's running statistics
(``batch_stats``) are plain arrays, replicated.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

SPATIAL_AXES = ("conv_t", "conv_h", "conv_w")


def _tuple(value: int | Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    out = (int(value),) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"conv {what}={value!r} must be an int or {ndim} ints "
                         f"(one per spatial dim)")
    return out


def kernel_axes(spatial_dims: int) -> tuple[str, ...]:
    """Logical names of a conv kernel with ``spatial_dims`` spatial dimensions (1, 2 or 3)."""
    if not 1 <= spatial_dims <= len(SPATIAL_AXES):
        raise ValueError(f"conv kernels have 1-3 spatial dims, got {spatial_dims}")
    return SPATIAL_AXES[-spatial_dims:] + ("conv_in", "conv_out")


def conv(features: int, kernel_size: int | Sequence[int] = 3, strides: int | Sequence[int] = 1, *,
         padding="SAME", use_bias: bool = True, feature_group_count: int = 1,
         kernel_dilation: int | Sequence[int] = 1, spatial_dims: int | None = None,
         kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
         dtype=None, name: str | None = None) -> nn.Conv:
    """``nn.Conv`` whose kernel and bias carry logical names.

    An int ``kernel_size`` means a square 2-D kernel unless ``spatial_dims`` says otherwise; a
    sequence gives one size per spatial dim. The default init is He-normal (fan-out), as in ResNet.
    """
    ndim = spatial_dims or (2 if isinstance(kernel_size, int) else len(kernel_size))
    return nn.Conv(
        features, _tuple(kernel_size, ndim, "kernel_size"), _tuple(strides, ndim, "strides"),
        padding=padding, use_bias=use_bias, feature_group_count=feature_group_count,
        kernel_dilation=_tuple(kernel_dilation, ndim, "kernel_dilation"), dtype=dtype, name=name,
        kernel_init=nn.with_logical_partitioning(kernel_init, kernel_axes(ndim)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)))


def batch_norm(*, momentum: float = 0.9, epsilon: float = 1e-5, zero_init: bool = False,
               dtype=None, name: str | None = None) -> nn.BatchNorm:
    """``nn.BatchNorm`` over the channel axis with scale and bias named ``("conv_out",)``.

    ``zero_init`` starts the scale at 0 (the last norm of a residual branch, so each block starts
    as the identity). Pass ``use_running_average`` when calling it.
    """
    scale_init = nn.initializers.zeros_init() if zero_init else nn.initializers.ones_init()
    return nn.BatchNorm(momentum=momentum, epsilon=epsilon, dtype=dtype, name=name,
                        scale_init=nn.with_logical_partitioning(scale_init, ("conv_out",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               ("conv_out",)))


def activation(act: str | Callable | None) -> Callable:
    """An activation from a callable, a ``jax.nn`` name (``"relu"``, ``"gelu"``...) or ``None``."""
    if act is None:
        return lambda x: x
    if callable(act):
        return act
    fn = getattr(jax.nn, str(act), None)
    if not callable(fn):
        raise ValueError(f"activation {act!r} is not a jax.nn function (e.g. 'relu', 'silu', "
                         f"'gelu') or null")
    return fn


class ConvBNAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> activation: the unit a ResNet is built from.

    BatchNorm uses batch statistics and updates ``batch_stats`` when ``train`` is true (apply with
    ``mutable=["batch_stats"]``), and the running averages otherwise.
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: str | Sequence = "SAME"
    feature_group_count: int = 1
    act: str | Callable | None = "relu"
    momentum: float = 0.9
    epsilon: float = 1e-5
    zero_init_scale: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = conv(self.features, self.kernel_size, self.strides, padding=self.padding,
                 use_bias=False, feature_group_count=self.feature_group_count,
                 spatial_dims=x.ndim - 2, dtype=self.dtype, name="conv")(x)
        x = batch_norm(momentum=self.momentum, epsilon=self.epsilon, zero_init=self.zero_init_scale,
                       dtype=self.dtype, name="bn")(x, use_running_average=not train)
        return activation(self.act)(x)
