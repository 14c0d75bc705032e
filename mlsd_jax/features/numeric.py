"""Numeric feature transforms, fitted on the training split only.

A fitted transform is a dict of arrays (a pytree) plus a pure ``apply`` function, so the same
code runs in the jitted training step, batch inference, the server and the exported SavedModel.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import jax.numpy as jnp
import numpy as np


def signed_log1p(x):
    """``sign(x) * log1p(|x|)``: tames heavy-tailed counts (BM25, PageRank, URL length...)."""
    xp = jnp if not isinstance(x, np.ndarray) else np
    return xp.sign(x) * xp.log1p(xp.abs(x))


class StreamingMoments:
    """Per-column mean and variance over chunks (Chan et al.'s parallel update), float64."""

    def __init__(self, num_features: int):
        self.n = 0
        self.mean = np.zeros(num_features, np.float64)
        self.m2 = np.zeros(num_features, np.float64)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.mean.shape[0])
        if not len(x):
            return
        n_b, mean_b = len(x), x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta ** 2 * self.n * n_b / n
        self.n = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


def fit_log1p_standardize(chunks: Iterable[np.ndarray], num_features: int,
                          eps: float = 1e-6) -> dict[str, np.ndarray]:
    """Fits ``standardize(signed_log1p(x))`` from an iterable of ``[n, F]`` chunks."""
    moments = StreamingMoments(num_features)
    for chunk in chunks:
        moments.update(signed_log1p(np.asarray(chunk, np.float64)))
    if moments.n == 0:
        raise ValueError("fit_log1p_standardize: the training split has no rows")
    std = moments.std
    return {"mean": moments.mean.astype(np.float32),
            # Constant columns keep scale 1 so they map to 0 instead of blowing up.
            "std": np.where(std > eps, std, 1.0).astype(np.float32)}


def log1p_standardize(stats: Mapping[str, jnp.ndarray], x):
    """Applies a fitted transform to ``[..., F]`` features (jit- and jax2tf-friendly)."""
    return (signed_log1p(x) - stats["mean"]) / stats["std"]
