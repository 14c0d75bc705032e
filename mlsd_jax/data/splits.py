"""Query-grouped train/valid/test splits."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["query_group_split"]


def query_group_split(n_queries: int, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Split query indices ``0..n_queries-1`` into ``len(fractions)`` disjoint parts.

    ``fractions`` are non-negative weights, normalised to sum to 1 (so
    ``(0.6, 0.2, 0.2)`` and ``(3, 1, 1)`` are the same split).  Part sizes follow
    the largest-remainder rule; every part with a positive weight gets at least
    one query when ``n_queries`` allows it.  The parts cover all queries, are
    deterministic in ``seed`` and are returned sorted (int64).
    """
    n = int(n_queries)
    if n < 0:
        raise ValueError(f"n_queries must be >= 0, got {n_queries}")
    w = np.asarray(fractions, np.float64).reshape(-1)
    if w.size == 0 or np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum, got {list(fractions)}")
    w = w / w.sum()
    exact = w * n
    sizes = np.floor(exact).astype(np.int64)
    rest = n - int(sizes.sum())
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[:rest]] += 1
    positive = np.flatnonzero(w > 0)
    if n >= positive.size:
        for k in positive:
            while sizes[k] == 0:
                donor = int(np.argmax(sizes))
                sizes[donor] -= 1
                sizes[k] += 1
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(perm[bounds[i]:bounds[i + 1]]).astype(np.int64) for i in range(sizes.size)]
