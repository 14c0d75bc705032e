"""Online change detection on one numeric series, and TCPD's scoring of detected change points.

Two detectors, both restarted after every alarm (the reference is re-learnt from the
``ref_size`` points that follow it, during which no alarm can fire):

* :func:`cusum`: two-sided CUSUM (Page 1954) on the series standardised by its reference
  mean and standard deviation: ``S+ = max(0, S+ + z - k)``, ``S- = max(0, S- - z - k)``; alarm
  when either exceeds ``h``.  Besides the alarm time it returns the onset estimate, the index
  after the last time the alarming sum was 0 (the usual CUSUM change-time estimate).
* :func:`windowed_ks`: the two-sample Kolmogorov-Smirnov test
  (:func:`mlsd_jax.monitoring.drift.ks_2samp`) of the latest ``window`` points against the
  reference window; alarm when its p-value is below ``alpha``.

:func:`f_measure` is van den Burg & Williams' (2020) F1 of predicted change points against
several annotators (their ``metrics.py``: index 0 counts as a change point for everyone, a
prediction matches at most one annotated point within ``margin``; precision against the union
of the annotations, recall averaged over annotators).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mlsd_jax.monitoring.drift import ks_2samp

__all__ = ["cusum", "windowed_ks", "true_positives", "f_measure"]


def _series(x, name: str = "x") -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one series (1-D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has NaN or infinite values at {np.flatnonzero(~np.isfinite(x))[:5].tolist()}")
    return x


def cusum(x, *, ref_size: int = 30, k: float = 0.5, h: float = 8.0) -> dict:
    """Two-sided CUSUM alarms on series ``x`` (module docstring).

    Returns ``{"alarms": [t, ...], "onsets": [estimated change index per alarm]}``.  A
    reference with zero spread uses ``1e-9 * max(1, |mean|)`` as its standard deviation.
    """
    x = _series(x)
    if ref_size < 2:
        raise ValueError(f"ref_size must be >= 2, got {ref_size}")
    if k < 0 or h <= 0:
        raise ValueError(f"need k >= 0 and h > 0, got k={k}, h={h}")
    alarms, onsets = [], []
    start = 0
    while start + ref_size < x.size:
        ref = x[start:start + ref_size]
        mu, sd = ref.mean(), ref.std()
        sd = sd if sd > 0 else 1e-9 * max(1.0, abs(mu))
        z = (x[start + ref_size:] - mu) / sd
        hi = lo = 0.0
        hi0 = lo0 = start + ref_size  # index after the last zero of each sum
        fired = None
        for i, zi in enumerate(z):
            t = start + ref_size + i
            hi = max(0.0, hi + zi - k)
            lo = max(0.0, lo - zi - k)
            if hi == 0.0:
                hi0 = t + 1
            if lo == 0.0:
                lo0 = t + 1
            if hi > h or lo > h:
                fired = (t, hi0 if hi > h else lo0)
                break
        if fired is None:
            break
        alarms.append(int(fired[0]))
        onsets.append(int(min(fired[1], fired[0])))
        start = fired[0] + 1
    return {"alarms": alarms, "onsets": onsets}


def windowed_ks(x, *, ref_size: int = 30, window: int = 30, alpha: float = 0.001) -> dict:
    """KS-test alarms of the last ``window`` points against the reference (module docstring).

    Returns ``{"alarms": [t, ...], "p_values": [p at each alarm]}``.
    """
    x = _series(x)
    if ref_size < 2 or window < 2:
        raise ValueError(f"ref_size and window must be >= 2, got {ref_size}, {window}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    alarms, pvals = [], []
    start = 0
    while True:
        ref = np.sort(x[start:start + ref_size])
        first = start + ref_size + window - 1
        if first >= x.size:
            break
        fired = None
        for t in range(first, x.size):
            _, p = ks_2samp(ref, x[t - window + 1:t + 1])
            if p < alpha:
                fired = (t, p)
                break
        if fired is None:
            break
        alarms.append(int(fired[0]))
        pvals.append(float(fired[1]))
        start = fired[0] + 1
    return {"alarms": alarms, "p_values": pvals}


def true_positives(truth, predicted, margin: int = 5) -> set:
    """Annotated points matched by a prediction within ``margin``, each prediction used once."""
    left = set(int(v) for v in predicted)
    tp = set()
    for tau in sorted(set(int(v) for v in truth)):
        close = sorted((abs(tau - x), x) for x in left if abs(tau - x) <= margin)
        if close:
            tp.add(tau)
            left.remove(close[0][1])
    return tp


def f_measure(annotations: Mapping[str, Sequence[int]], predicted: Sequence[int], margin: int = 5,
              alpha: float = 0.5) -> dict:
    """``{"f1", "precision", "recall"}`` of ``predicted`` against per-annotator change points."""
    if not annotations:
        raise ValueError("annotations is empty: need at least one annotator")
    tks = [set(int(t) for t in v) | {0} for v in annotations.values()]
    x = set(int(t) for t in predicted) | {0}
    tstar = set().union(*tks)
    p = len(true_positives(tstar, x, margin)) / len(x)
    r = float(np.mean([len(true_positives(tk, x, margin)) / len(tk) for tk in tks]))
    f = 0.0 if p == 0 and r == 0 else p * r / (alpha * r + (1 - alpha) * p)
    return {"f1": f, "precision": p, "recall": r}
