"""Ranking losses (rax-style API).

Every loss has the signature::

    loss(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean, ...)

and works on the last axis (the list) with any number of leading batch axes.

Conventions
-----------
* ``where``: boolean mask of valid items. Masked items never change the value
  or the gradients w.r.t. valid items, and receive zero gradient themselves.
* ``weights``: per-item weights (or per-list with a trailing singleton axis).
* ``reduce_fn`` reduces the per-list values over all leading axes, counting
  only lists with at least one valid item (``softmax_loss``: lists with at
  least one valid item AND a positive label sum). ``jnp.mean`` over no lists is
  0.0. ``reduce_fn=None`` returns per-list values, shape ``scores.shape[:-1]``.
* Fully masked lists give 0 and zero (finite) gradients.

Per-list normalisation
----------------------
* pointwise losses: ``sum_i w_i * loss_i / (number of valid items)``.
* pairwise losses: over pairs ``(i, j)`` with ``label_i > label_j``, both valid:
  ``sum_ij w_i * lambda_ij * loss_ij / (number of such pairs)`` (the weight of
  the more relevant item ``i`` is used; ``lambda_ij = 1`` without a
  ``lambdaweight_fn``). Lists with no such pair have value 0.
* ``softmax_loss``: cross-entropy (a sum over items, no extra normalisation).
* ``listmle_loss``: Plackett-Luce negative log-likelihood (sum over positions).
* ``approx_ndcg_loss``: ``-approxNDCG`` in ``[-1, 0]``.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from mlsd_jax.losses.lambdaweights import dcg_lambdaweight
from mlsd_jax.utils.masking import (
    masked_logsumexp,
    pair_mask,
    prepare_inputs,
    ranks,
    safe_divide,
    safe_reduce,
)

__all__ = [
    "pointwise_mse_loss",
    "pointwise_sigmoid_loss",
    "pairwise_logistic_loss",
    "pairwise_hinge_loss",
    "softmax_loss",
    "listmle_loss",
    "approx_ndcg_loss",
    "lambdarank_loss",
]

LambdaweightFn = Callable[..., jax.Array]


def _list_valid(valid):
    return jnp.any(valid, axis=-1)


# --------------------------------------------------------------------------
# Pointwise
# --------------------------------------------------------------------------


def _pointwise(per_item, valid, w, reduce_fn):
    n = jnp.sum(valid.astype(jnp.float32), axis=-1)
    total = jnp.sum(jnp.where(valid, per_item * w, 0.0), axis=-1)
    return safe_reduce(safe_divide(total, n), _list_valid(valid), reduce_fn)


def pointwise_mse_loss(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean):
    """Mean squared error between scores and graded labels (per list: weighted
    sum over valid items / number of valid items)."""
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    return _pointwise(jnp.square(s - l), valid, w, reduce_fn)


def pointwise_sigmoid_loss(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean):
    """Sigmoid cross-entropy with binary targets ``label > 0`` (per list:
    weighted sum over valid items / number of valid items)."""
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    y = (l > 0).astype(jnp.float32)
    per_item = jnp.maximum(s, 0.0) - s * y + jnp.log1p(jnp.exp(-jnp.abs(s)))
    return _pointwise(per_item, valid, w, reduce_fn)


# --------------------------------------------------------------------------
# Pairwise
# --------------------------------------------------------------------------


def _pairwise(pair_loss_fn, scores, labels, where, weights, reduce_fn, lambdaweight_fn):
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    pairs = pair_mask(valid) & (l[..., :, None] > l[..., None, :])
    diff = s[..., :, None] - s[..., None, :]  # s_i - s_j
    per_pair = pair_loss_fn(diff)
    pw = jnp.broadcast_to(w[..., :, None], per_pair.shape)
    if lambdaweight_fn is not None:
        lw = lambdaweight_fn(s, l, where=valid)
        pw = pw * jax.lax.stop_gradient(jnp.asarray(lw, jnp.float32))
    total = jnp.sum(jnp.where(pairs, per_pair * pw, 0.0), axis=(-2, -1))
    n_pairs = jnp.sum(pairs, axis=(-2, -1), dtype=jnp.int32).astype(jnp.float32)
    return safe_reduce(safe_divide(total, n_pairs), _list_valid(valid), reduce_fn)


def _neg_softplus(diff):
    return jax.nn.softplus(-diff)


def _hinge(diff):
    return jax.nn.relu(1.0 - diff)


def pairwise_hinge_loss(
    scores,
    labels,
    *,
    where=None,
    weights=None,
    reduce_fn=jnp.mean,
    lambdaweight_fn: Optional[LambdaweightFn] = None,
):
    """Hinge loss ``max(0, 1 - (s_i - s_j))`` over pairs with ``label_i > label_j``."""
    return _pairwise(_hinge, scores, labels, where, weights, reduce_fn, lambdaweight_fn)


def pairwise_logistic_loss(
    scores,
    labels,
    *,
    where=None,
    weights=None,
    reduce_fn=jnp.mean,
    lambdaweight_fn: Optional[LambdaweightFn] = None,
):
    """RankNet loss ``log(1 + exp(-(s_i - s_j)))`` over pairs with
    ``label_i > label_j``. ``lambdaweight_fn(scores, labels, *, where)`` may
    return ``[..., L, L]`` pair weights (gradients are stopped)."""
    return _pairwise(_neg_softplus, scores, labels, where, weights, reduce_fn, lambdaweight_fn)


def lambdarank_loss(
    scores,
    labels,
    *,
    where=None,
    weights=None,
    reduce_fn=jnp.mean,
    topn: Optional[int] = None,
    normalize: bool = True,
):
    """LambdaRank: :func:`pairwise_logistic_loss` weighted by
    :func:`~mlsd_jax.losses.lambdaweights.dcg_lambdaweight` (|Delta NDCG| of
    swapping the pair, ranks from the current scores)."""
    lw_fn = functools.partial(dcg_lambdaweight, topn=topn, normalize=normalize)
    return pairwise_logistic_loss(
        scores, labels, where=where, weights=weights, reduce_fn=reduce_fn, lambdaweight_fn=lw_fn
    )


# --------------------------------------------------------------------------
# Listwise
# --------------------------------------------------------------------------


def softmax_loss(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean):
    """ListNet cross-entropy ``-sum_i p_i log_softmax(s)_i`` over valid items,
    with ``p_i = w_i l_i / sum_j w_j l_j``. Lists whose (weighted) labels sum
    to 0 contribute 0 and are not counted by ``reduce_fn``."""
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    target = l * w
    total = jnp.sum(target, axis=-1, keepdims=True)
    p = safe_divide(target, total)
    lse = masked_logsumexp(s, valid)
    log_p = s - lse[..., None]
    values = -jnp.sum(jnp.where(valid, p * log_p, 0.0), axis=-1)
    counted = _list_valid(valid) & (total[..., 0] > 0)
    return safe_reduce(values, counted, reduce_fn)


def listmle_loss(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean):
    """ListMLE: Plackett-Luce NLL of the permutation sorting labels descending
    (ties by item index, stable; masked items excluded)::

        sum_k w_{pi(k)} * (logsumexp_{m >= k} s_{pi(m)} - s_{pi(k)})
    """
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    L = s.shape[-1]
    idx = jnp.arange(L)
    # after[..., k, m]: item m is placed at or after item k in the label order.
    lk, lm = l[..., :, None], l[..., None, :]
    after = (lm < lk) | ((lm == lk) & (idx[None, :] >= idx[:, None]))
    sel = after & valid[..., None, :]
    lse = masked_logsumexp(jnp.broadcast_to(s[..., None, :], sel.shape), sel)
    values = jnp.sum(jnp.where(valid, w * (lse - s), 0.0), axis=-1)
    return safe_reduce(values, _list_valid(valid), reduce_fn)


def approx_ndcg_loss(
    scores,
    labels,
    *,
    where=None,
    weights=None,
    reduce_fn=jnp.mean,
    temperature: float = 1.0,
):
    """Negative ApproxNDCG.

    ``rank_i = 1 + sum_{j != i, valid} sigmoid((s_j - s_i) / temperature)``;
    ``approxDCG = sum_i g_i / log2(1 + rank_i)`` with ``g = (2^label - 1) w``;
    normalised by the exact ideal DCG (0 if the ideal DCG is 0).
    """
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    gains = jnp.where(valid, (jnp.power(2.0, l) - 1.0) * w, 0.0)
    L = s.shape[-1]
    off_diag = ~jnp.eye(L, dtype=bool)
    sel = pair_mask(valid) & off_diag
    sig = jax.nn.sigmoid((s[..., None, :] - s[..., :, None]) / temperature)  # [i, j]
    approx_rank = 1.0 + jnp.sum(jnp.where(sel, sig, 0.0), axis=-1)
    dcg = jnp.sum(jnp.where(valid, gains / jnp.log2(1.0 + approx_rank), 0.0), axis=-1)
    ideal_rank = ranks(gains, valid).astype(jnp.float32)
    ideal = jnp.sum(jnp.where(valid, gains / jnp.log2(1.0 + ideal_rank), 0.0), axis=-1)
    values = -safe_divide(dcg, ideal)
    return safe_reduce(values, _list_valid(valid), reduce_fn)
