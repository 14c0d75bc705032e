"""Top-k recommendation metrics: full ranking over a catalogue and sampled candidates (NCF).

Full ranking (RecBole's definitions, ``recbole/evaluator/metrics.py``): a user's scores over all
catalogue items, known history items set to ``-inf``, top ``k`` by :func:`jax.lax.top_k` (ties
go to the lower item index); ``hits[j]`` says whether the ``j``-th recommendation is a positive.
With ``P`` = the user's positives in the split:

* ``recall@k = |hits| / |P|``; ``precision@k = |hits| / k``; ``hit@k = 1[|hits| > 0]``;
* ``mrr@k = 1 / rank`` of the first hit in the top ``k`` (0 without one);
* ``ndcg@k = DCG / IDCG`` with ``DCG = sum_j hits[j] / log2(j + 2)`` and the ideal DCG over
  ``min(|P|, k)`` positions.

Users without positives in the split get weight 0 (RecBole evaluates only users present in the
split). Sampled ranking (NCF protocol): candidates ``[B, C]`` with the positive in column 0; its
rank is the number of negatives scored at least as high (ties count against the positive), and
``hr@k = 1[rank < k]``, ``ndcg@k = 1[rank < k] / log2(rank + 2)``, ``mrr@k = 1[rank < k] /
(rank + 1)``.

:class:`TopKMetrics` wraps these as a mergeable accumulator (update on device, sums merged on
the host), so evaluation over a whole split is exact however it is batched.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mlsd_jax.metrics.streaming import Metric

__all__ = ["FULL_METRICS", "SAMPLED_METRICS", "TopKMetrics", "full_ranking", "sampled_ranking",
           "sampled_rank", "topk_hits"]

FULL_METRICS = ("recall", "mrr", "ndcg", "hit", "precision")
SAMPLED_METRICS = ("hr", "ndcg", "mrr")


def topk_hits(scores, labels, exclude, k: int):
    """``(hits [B, k] float32, num_positives [B] float32)``.

    ``scores``: ``[B, I]``; ``labels``: ``[B, I]`` bool positives; ``exclude``: ``[B, I]`` bool
    items never recommended (scored ``-inf`` first). ``k`` must not exceed ``I``.
    """
    scores = jnp.where(exclude, -jnp.inf, scores.astype(jnp.float32))
    _, idx = jax.lax.top_k(scores, k)
    hits = jnp.take_along_axis(labels, idx, axis=1).astype(jnp.float32)
    return hits, jnp.sum(labels, axis=1).astype(jnp.float32)


def _discounts(k: int):
    return 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)


def full_ranking(scores, labels, exclude, ks: Sequence[int],
                 names: Sequence[str] = FULL_METRICS) -> dict:
    """Per-user ``{f"{name}@{k}": [B]}`` for every name in ``names`` and every ``k`` in ``ks``."""
    kmax = max(ks)
    hits, npos = topk_hits(scores, labels, exclude, kmax)
    safe = jnp.maximum(npos, 1.0)
    disc = _discounts(kmax)
    first = jnp.argmax(hits, axis=1)
    out = {}
    for k in ks:
        h = hits[:, :k]
        n_hit = jnp.sum(h, axis=1)
        found = n_hit > 0
        ideal = jnp.cumsum(disc[:k])[jnp.clip(jnp.minimum(npos, k).astype(jnp.int32) - 1, 0, k - 1)]
        values = {
            "recall": n_hit / safe,
            "precision": n_hit / k,
            "hit": found.astype(jnp.float32),
            "mrr": jnp.where(found, 1.0 / (first + 1.0), 0.0),
            "ndcg": jnp.sum(h * disc[:k], axis=1) / ideal,
        }
        out.update({f"{n}@{k}": values[n] for n in names})
    return out


def sampled_rank(scores):
    """Rank (0 = first) of column 0 among ``scores [B, C]``; ties count against it."""
    return jnp.sum(scores[:, 1:] >= scores[:, :1], axis=1)


def sampled_ranking(scores, ks: Sequence[int], names: Sequence[str] = SAMPLED_METRICS) -> dict:
    """Per-user ``{f"{name}@{k}": [B]}`` for the positive in column 0 of ``scores [B, C]``."""
    rank = sampled_rank(scores.astype(jnp.float32)).astype(jnp.float32)
    out = {}
    for k in ks:
        inside = rank < k
        values = {"hr": inside.astype(jnp.float32),
                  "ndcg": jnp.where(inside, 1.0 / jnp.log2(rank + 2.0), 0.0),
                  "mrr": jnp.where(inside, 1.0 / (rank + 1.0), 0.0)}
        out.update({f"{n}@{k}": values[n] for n in names})
    return out


@dataclasses.dataclass(frozen=True)
class TopKMetrics(Metric):
    """Mean per-user top-k metrics over a split: ``kind="full"`` (catalogue ranking, keys
    ``scores``, ``labels``, ``exclude``) or ``"sampled"`` (candidates with the positive first,
    key ``scores``). ``compute`` returns ``{f"{name}@{k}": mean}`` over users with weight > 0
    (for ``full``, users with at least one positive)."""

    kind: str = "full"
    ks: tuple = (10,)
    names: tuple = FULL_METRICS
    scores: str = "scores"
    labels: str = "labels"
    exclude: str = "exclude"

    def __post_init__(self):
        if self.kind not in ("full", "sampled"):
            raise ValueError(f"TopKMetrics.kind={self.kind!r}; expected 'full' or 'sampled'")
        valid = FULL_METRICS if self.kind == "full" else SAMPLED_METRICS
        bad = [n for n in self.names if n not in valid]
        if bad or not self.names:
            raise ValueError(f"TopKMetrics.names={list(self.names)}: expected names among "
                             f"{list(valid)} for kind={self.kind!r}")
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise ValueError(f"TopKMetrics.ks={list(self.ks)}: expected cut-offs >= 1")

    def update(self, outputs, batch, weights):
        scores = self._get(outputs, batch, "scores")
        if self.kind == "full":
            labels = self._get(outputs, batch, "labels")
            values = full_ranking(scores, labels, self._get(outputs, batch, "exclude"),
                                  self.ks, self.names)
            weights = weights * (jnp.sum(labels, axis=1) > 0)
        else:
            values = sampled_ranking(scores, self.ks, self.names)
        w = jnp.asarray(weights, jnp.float32)
        return {"total": {n: jnp.sum(w * v) for n, v in values.items()}, "weight": jnp.sum(w)}

    def compute(self, state) -> Mapping[str, float]:
        if state is None or float(state["weight"]) <= 0:
            return {f"{n}@{k}": float("nan") for k in self.ks for n in self.names}
        return {n: float(np.asarray(t) / np.asarray(state["weight"]))
                for n, t in state["total"].items()}
