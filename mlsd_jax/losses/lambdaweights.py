"""Lambda weights for pairwise ranking losses.

A lambda weight function has the signature
``fn(scores, labels, *, where=None, weights=None, ...) -> [..., L, L]`` and
returns a non-negative weight for every pair ``(i, j)`` (``i`` on axis -2,
``j`` on axis -1). Pairs involving a masked item get weight 0. The result is
wrapped in :func:`jax.lax.stop_gradient`.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mlsd_jax.utils.masking import pair_mask, prepare_inputs, safe_divide

__all__ = ["dcg_lambdaweight", "labeldiff_lambdaweight"]


def dcg_lambdaweight(
    scores,
    labels,
    *,
    where=None,
    weights=None,
    topn: Optional[int] = None,
    normalize: bool = True,
):
    """|Delta DCG| obtained by swapping items ``i`` and ``j`` (LambdaRank).

    ``w_ij = |g_i - g_j| * |d(rank_i) - d(rank_j)|`` with gains
    ``g = (2^label - 1) * weights``, ranks from the CURRENT scores (ties by item
    index) and discount ``d(r) = 1/log2(1 + r)`` for ``r <= topn`` (0 beyond).
    With ``normalize=True`` the weights are divided by the ideal DCG@topn of the
    list (so they are |Delta NDCG|); lists with ideal DCG 0 get all-zero weights.
    """
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    gains = (jnp.power(2.0, l) - 1.0) * w
    gains = jnp.where(valid, gains, 0.0)

    def disc(rank):
        d = 1.0 / jnp.log2(1.0 + rank.astype(jnp.float32))
        if topn is not None:
            d = jnp.where(rank <= topn, d, 0.0)
        return jnp.where(valid, d, 0.0)

    d = disc(_pairwise_ranks(s, valid))
    lw = jnp.abs(gains[..., :, None] - gains[..., None, :]) * jnp.abs(d[..., :, None] - d[..., None, :])
    if normalize:
        ideal = jnp.sum(gains * disc(_pairwise_ranks(gains, valid)), axis=-1)
        lw = safe_divide(lw, ideal[..., None, None])
    lw = jnp.where(pair_mask(valid), lw, 0.0)
    return jax.lax.stop_gradient(lw)


def _pairwise_ranks(scores, valid):
    """:func:`~mlsd_jax.utils.masking.ranks` (same ranks, ties by index, masked items last) by
    counting the items ahead of each one. The lambda weights already cost O(L^2) per list, and
    one fused compare-and-count pass over the pairs is cheaper than XLA's sorts on CPU."""
    idx = jnp.arange(scores.shape[-1])
    earlier = idx[None, :] < idx[:, None]  # [i, j]: j comes before i
    si, sj = scores[..., :, None], scores[..., None, :]
    vj = valid[..., None, :]
    ahead = jnp.where(valid[..., :, None], vj & ((sj > si) | ((sj == si) & earlier)),
                      vj | earlier)
    return 1 + jnp.sum(ahead, axis=-1, dtype=jnp.int32)


def labeldiff_lambdaweight(scores, labels, *, where=None, weights=None):
    """``w_ij = |label_i - label_j|`` for valid pairs (``weights`` is accepted
    for API compatibility and ignored; pairwise losses apply item weights)."""
    del weights
    _, l, valid, _ = prepare_inputs(scores, labels, where, None)
    lw = jnp.abs(l[..., :, None] - l[..., None, :])
    lw = jnp.where(pair_mask(valid), lw, 0.0)
    return jax.lax.stop_gradient(lw)
