"""Ranking metrics (rax-style API).

Every metric has the signature::

    metric(scores, labels, *, where=None, weights=None, topn=None,
           reduce_fn=jnp.mean, ...)

and works on the last axis (the list) with any number of leading batch axes.

Conventions
-----------
* Ranks are 1-based and come from sorting scores in descending order; ties are
  broken by original item index (lower index ranks first, stable sort). Masked
  items are ranked after every valid item and never contribute.
* ``topn`` (static Python int or ``None``) restricts the metric to the items at
  ranks ``1..topn``.
* Gain ``2**label - 1``, discount ``1 / log2(1 + rank)``.
* Binary relevance (MRR, MAP, precision, recall): ``label >= relevance_threshold``
  (default 1).
* ``weights`` (per item, or per list with a trailing singleton axis) scale each
  item's contribution: the gain for DCG/NDCG, the relevance indicator for
  precision/recall/MAP, the reciprocal rank for MRR.
* ``reduce_fn`` reduces over all lists; only lists with at least one valid item
  are counted (``jnp.mean`` of no lists is 0.0). ``reduce_fn=None`` returns the
  per-list values with shape ``scores.shape[:-1]`` (0 for fully masked lists).
"""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from mlsd_jax.utils.masking import prepare_inputs, ranks, safe_divide, safe_reduce

__all__ = [
    "dcg_metric",
    "ndcg_metric",
    "mrr_metric",
    "map_metric",
    "precision_metric",
    "recall_metric",
]


def _gains(labels):
    return jnp.power(2.0, labels) - 1.0


def _discounts(rank, topn: Optional[int]):
    rank_f = rank.astype(jnp.float32)
    d = 1.0 / jnp.log2(1.0 + rank_f)
    if topn is not None:
        d = jnp.where(rank <= topn, d, 0.0)
    return d


def _in_topn(rank, valid, topn: Optional[int]):
    if topn is None:
        return valid
    return valid & (rank <= topn)


def _dcg(gains, rank, valid, topn):
    return jnp.sum(jnp.where(valid, gains * _discounts(rank, topn), 0.0), axis=-1)


def dcg_metric(scores, labels, *, where=None, weights=None, topn: Optional[int] = None, reduce_fn=jnp.mean):
    """Discounted cumulative gain: ``sum_i w_i (2^l_i - 1) / log2(1 + rank_i)``."""
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    r = ranks(s, valid)
    values = _dcg(_gains(l) * w, r, valid, topn)
    return safe_reduce(values, jnp.any(valid, axis=-1), reduce_fn)


def ndcg_metric(scores, labels, *, where=None, weights=None, topn: Optional[int] = None, reduce_fn=jnp.mean):
    """Normalised DCG: DCG@topn / ideal DCG@topn.

    The ideal DCG ranks valid items by their (weighted) gain. A list whose
    ideal DCG is 0 (no relevant valid item) has NDCG 0 and is still counted in
    the reduction.
    """
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    gains = _gains(l) * w
    dcg = _dcg(gains, ranks(s, valid), valid, topn)
    ideal = _dcg(gains, ranks(gains, valid), valid, topn)
    values = safe_divide(dcg, ideal)
    return safe_reduce(values, jnp.any(valid, axis=-1), reduce_fn)


def mrr_metric(
    scores,
    labels,
    *,
    where=None,
    weights=None,
    topn: Optional[int] = None,
    reduce_fn=jnp.mean,
    relevance_threshold: float = 1.0,
):
    """Reciprocal rank of the first relevant item within ``topn`` (0 if none)."""
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    r = ranks(s, valid)
    rel = _in_topn(r, valid, topn) & (l >= relevance_threshold)
    rr = jnp.where(rel, 1.0 / r.astype(jnp.float32), 0.0)
    # The first relevant item is the one with the largest reciprocal rank;
    # select its weight (ranks are distinct, so the argmax is unique).
    first = jnp.argmax(rr, axis=-1)[..., None]
    values = jnp.take_along_axis(rr * w, first, axis=-1)[..., 0]
    return safe_reduce(values, jnp.any(valid, axis=-1), reduce_fn)


def precision_metric(
    scores,
    labels,
    *,
    where=None,
    weights=None,
    topn: Optional[int] = None,
    reduce_fn=jnp.mean,
    relevance_threshold: float = 1.0,
):
    """Precision@topn: (weighted) relevant items in the top ``topn`` / denominator.

    The denominator is ``min(topn, number of valid items)`` (the number of valid
    items when ``topn`` is None), so a list shorter than ``topn`` is not
    penalised for its missing slots.
    """
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    r = ranks(s, valid)
    rel = (_in_topn(r, valid, topn) & (l >= relevance_threshold)).astype(jnp.float32)
    num = jnp.sum(rel * w, axis=-1)
    n_valid = jnp.sum(valid.astype(jnp.float32), axis=-1)
    den = n_valid if topn is None else jnp.minimum(float(topn), n_valid)
    values = safe_divide(num, den)
    return safe_reduce(values, jnp.any(valid, axis=-1), reduce_fn)


def recall_metric(
    scores,
    labels,
    *,
    where=None,
    weights=None,
    topn: Optional[int] = None,
    reduce_fn=jnp.mean,
    relevance_threshold: float = 1.0,
):
    """Recall@topn: (weighted) relevant items in the top ``topn`` / all relevant
    valid items. Lists without relevant items have recall 0."""
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    r = ranks(s, valid)
    rel_all = (valid & (l >= relevance_threshold)).astype(jnp.float32) * w
    rel_top = jnp.where(_in_topn(r, valid, topn), rel_all, 0.0)
    values = safe_divide(jnp.sum(rel_top, axis=-1), jnp.sum(rel_all, axis=-1))
    return safe_reduce(values, jnp.any(valid, axis=-1), reduce_fn)


def map_metric(
    scores,
    labels,
    *,
    where=None,
    weights=None,
    topn: Optional[int] = None,
    reduce_fn=jnp.mean,
    relevance_threshold: float = 1.0,
):
    """(Mean) average precision.

    ``AP@k = sum_{i relevant, rank_i <= k} w_i * P@rank_i / sum_{i relevant} w_i``
    where ``P@r`` is the (unweighted) fraction of relevant items among the top
    ``r`` and the denominator runs over ALL relevant valid items (not capped by
    ``topn``). Lists without relevant items have AP 0.
    """
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    r = ranks(s, valid)
    rel = valid & (l >= relevance_threshold)
    # hits_at[i] = number of relevant items ranked at or above item i.
    above = r[..., None, :] <= r[..., :, None]  # [..., i, j]: rank_j <= rank_i
    hits_at = jnp.sum((above & rel[..., None, :]).astype(jnp.float32), axis=-1)
    prec_at = hits_at / r.astype(jnp.float32)
    rel_w = rel.astype(jnp.float32) * w
    num = jnp.sum(jnp.where(_in_topn(r, valid, topn), rel_w * prec_at, 0.0), axis=-1)
    values = safe_divide(num, jnp.sum(rel_w, axis=-1))
    return safe_reduce(values, jnp.any(valid, axis=-1), reduce_fn)


__all__ += ["auc_metric", "mind_mrr_metric"]


def auc_metric(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean,
               relevance_threshold: float = 1.0):
    """Per-list ROC-AUC: the fraction of (relevant, non-relevant) pairs of valid items ranked
    in order, ties counting one half (``sklearn.metrics.roc_auc_score`` within each list).

    ``weights`` (per item) weight each pair by the product of its items' weights. Lists
    without both a relevant and a non-relevant valid item have AUC 0 and are not counted by
    ``reduce_fn`` (their AUC is undefined). Pairwise: ``O(L^2)`` per list.
    """
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    rel = valid & (l >= relevance_threshold)
    non = valid & (l < relevance_threshold)
    pair = (rel[..., :, None] & non[..., None, :]).astype(jnp.float32)
    pair = pair * w[..., :, None] * w[..., None, :]
    diff = s[..., :, None] - s[..., None, :]
    won = jnp.where(diff > 0, 1.0, jnp.where(diff == 0, 0.5, 0.0))
    total = jnp.sum(pair, axis=(-2, -1))
    values = safe_divide(jnp.sum(pair * won, axis=(-2, -1)), total)
    return safe_reduce(values, total > 0, reduce_fn)


def mind_mrr_metric(scores, labels, *, where=None, weights=None, reduce_fn=jnp.mean,
                    relevance_threshold: float = 1.0):
    """MRR as the MIND benchmark computes it: the mean of ``1 / rank`` over **all** relevant
    items of a list (``sum_i rel_i / rank_i / sum_i rel_i``), not only the first one.

    ``weights`` (per item) weight each relevant item. Lists without a relevant valid item have
    0 and are not counted by ``reduce_fn``.
    """
    s, l, valid, w = prepare_inputs(scores, labels, where, weights)
    r = ranks(s, valid)
    rel = (valid & (l >= relevance_threshold)).astype(jnp.float32) * w
    total = jnp.sum(rel, axis=-1)
    values = safe_divide(jnp.sum(rel / r.astype(jnp.float32), axis=-1), total)
    return safe_reduce(values, total > 0, reduce_fn)
