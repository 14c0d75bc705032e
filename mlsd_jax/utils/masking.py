"""Masking helpers shared by the ranking losses and metrics.

Conventions used throughout :mod:`mlsd_jax.losses.ranking` and
:mod:`mlsd_jax.metrics.ranking`:

* The list axis is the LAST axis; any number of leading batch axes is allowed.
* ``where`` is a boolean mask of valid items with the same shape as the
  scores. ``None`` means every item is valid.
* Masked items never influence any value or gradient. All helpers here are
  written so that neither the forward pass nor the backward pass produces
  NaN/inf for fully masked lists (no ``log(0)``, ``0/0`` or ``-inf`` reach a
  differentiated path).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
ReduceFn = Optional[Callable[..., Array]]

__all__ = [
    "valid_mask",
    "prepare_inputs",
    "ranks",
    "safe_reduce",
    "safe_divide",
    "masked_logsumexp",
    "pair_mask",
]


def valid_mask(scores: Array, where: Optional[Array] = None) -> Array:
    """Returns a boolean mask of valid items with the shape of ``scores``."""
    scores = jnp.asarray(scores)
    if where is None:
        return jnp.ones(scores.shape, dtype=bool)
    return jnp.broadcast_to(jnp.asarray(where, dtype=bool), scores.shape)


def prepare_inputs(scores, labels, where=None, weights=None):
    """Casts to float32 and zeroes masked entries.

    Returns ``(scores, labels, where, weights)`` where scores/labels of masked
    items are replaced by 0 (so garbage in padded slots cannot leak into any
    computation or gradient) and ``weights`` is broadcast to ``scores.shape``
    (1 where not given, 0 on masked items). Per-list weights must be given
    with a trailing singleton axis, e.g. ``[B, 1]`` for ``[B, L]`` scores.
    """
    scores = jnp.asarray(scores, dtype=jnp.float32)
    labels = jnp.broadcast_to(jnp.asarray(labels, dtype=jnp.float32), scores.shape)
    valid = valid_mask(scores, where)
    scores = jnp.where(valid, scores, 0.0)
    labels = jnp.where(valid, labels, 0.0)
    if weights is None:
        w = jnp.ones(scores.shape, dtype=jnp.float32)
    else:
        w = jnp.broadcast_to(jnp.asarray(weights, dtype=jnp.float32), scores.shape)
    w = jnp.where(valid, w, 0.0)
    return scores, labels, valid, w


def ranks(scores: Array, where: Optional[Array] = None) -> Array:
    """1-based int32 ranks along the last axis (highest score gets rank 1).

    Ties are broken deterministically by the original item index (a lower index
    ranks first, i.e. a stable sort). Masked items are ranked after all valid
    items (in index order among themselves); their score values are ignored.
    """
    scores = jnp.asarray(scores)
    valid = valid_mask(scores, where)
    # Sort key: (invalid, -score, index). -0.0 and 0.0 are made identical so
    # that they tie as they compare equal.
    neg = jnp.where(valid, -scores, jnp.zeros((), scores.dtype))
    neg = jnp.where(neg == 0, jnp.zeros((), scores.dtype), neg)
    invalid = (~valid).astype(jnp.int32)
    axis = scores.ndim - 1
    iota = jax.lax.broadcasted_iota(jnp.int32, scores.shape, axis)
    _, _, perm = jax.lax.sort((invalid, neg, iota), dimension=axis, is_stable=True, num_keys=2)
    # Invert the permutation: rank[perm[k]] = k + 1.
    _, inv = jax.lax.sort((perm, iota), dimension=axis, is_stable=True, num_keys=1)
    return inv + 1


def safe_divide(num: Array, den: Array) -> Array:
    """``num / den`` where ``den != 0``, else 0, with NaN-free gradients."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)


def safe_reduce(values: Array, where: Optional[Array] = None, reduce_fn: ReduceFn = jnp.mean) -> Array:
    """Reduces per-list ``values`` counting only entries where ``where`` holds.

    * ``reduce_fn=None``: returns ``values`` with invalid entries set to 0.
    * ``jnp.mean``: sum of valid entries / number of valid entries (0.0 when
      there are none).
    * ``jnp.sum``: sum of valid entries.
    * any other callable is called as ``reduce_fn(values, where=where)`` and a
      non-finite result (e.g. from an empty selection) is mapped to 0.
    """
    values = jnp.asarray(values)
    if where is None:
        where = jnp.ones(values.shape, dtype=bool)
    where = jnp.broadcast_to(jnp.asarray(where, dtype=bool), values.shape)
    masked = jnp.where(where, values, jnp.zeros((), values.dtype))
    if reduce_fn is None:
        return masked
    if reduce_fn is jnp.sum:
        return jnp.sum(masked)
    if reduce_fn is jnp.mean:
        count = jnp.sum(where.astype(values.dtype))
        return jnp.sum(masked) / jnp.maximum(count, 1.0)
    out = reduce_fn(masked, where=where)
    return jnp.where(jnp.isfinite(out), out, jnp.zeros((), out.dtype))


def masked_logsumexp(x: Array, where: Array, axis: int = -1) -> Array:
    """``log(sum(exp(x)))`` over entries where ``where`` holds; 0 if none.

    Numerically stable and NaN-free in the backward pass even for empty
    selections (masked entries are replaced by the running max before ``exp``).
    """
    where = jnp.broadcast_to(where, x.shape)
    neg_inf = jnp.array(-jnp.inf, x.dtype)
    m = jnp.max(jnp.where(where, x, neg_inf), axis=axis, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    xs = jnp.where(where, x, m)
    e = jnp.where(where, jnp.exp(xs - m), 0.0)
    s = jnp.sum(e, axis=axis, keepdims=True)
    nonempty = s > 0
    out = jnp.where(nonempty, jnp.log(jnp.where(nonempty, s, 1.0)) + m, 0.0)
    return jnp.squeeze(out, axis=axis)


def pair_mask(valid: Array) -> Array:
    """``[..., L, L]`` mask of pairs ``(i, j)`` where both items are valid."""
    return valid[..., :, None] & valid[..., None, :]
