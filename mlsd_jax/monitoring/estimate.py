"""Confidence-based performance estimation (CBPE) for a binary classifier, as NannyML does.

Before labels arrive, a window's quality is estimated from the model's own scores:

1. **Calibration on the reference** (rows whose labels are known, not used to train the
   model).  :meth:`CBPE.fit` decides whether the scores need calibrating the way NannyML's
   ``needs_calibration`` does: over ``n_splits`` stratified 90/10 shuffle splits of the
   reference it fits the calibrator on 90% and compares the expected calibration error (ECE,
   :func:`expected_calibration_error`: ``bin_count`` equal-count bins of the sorted scores) of the
   raw and the calibrated scores on the other 10%; it calibrates when the mean ECE improvement is
   positive.  The calibrator is isotonic regression (``sklearn.isotonic.IsotonicRegression``,
   ``out_of_bounds="clip"``; ``calibrator="isotonic"``) or a histogram calibrator (the observed
   positive rate per equal-count score bin, ``calibrator="histogram"``).  ``calibration`` is
   ``"auto"`` (the check above), ``"always"`` or ``"never"``.
2. **Expected confusion matrix** of a window from the calibrated probabilities ``p_i`` and the
   model's predicted classes (``score >= threshold`` unless predicted classes are given):
   ``E[TP] = sum p_i`` and ``E[FP] = sum (1 - p_i)`` over predicted positives,
   ``E[FN] = sum p_i`` and ``E[TN] = sum (1 - p_i)`` over predicted negatives; hence expected
   accuracy ``(TP + TN) / n``, precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, specificity
   ``TN / (TN + FP)`` and F1 ``2 TP / (2 TP + FP + FN)`` (ratios of the expectations, as NannyML).
3. **Expected ROC-AUC** (:func:`expected_roc_auc`): rows sorted by score, highest first; at each
   distinct score the expected TPR is ``cumsum(p) / sum(p)`` and the expected FPR
   ``cumsum(1 - p) / sum(1 - p)``; the estimate is the trapezoid area under that curve (tied
   scores form one step, as ``sklearn.metrics.roc_auc_score`` treats ties).
4. **Confidence band**: the reference is cut into consecutive chunks of ``chunk_size`` rows; per
   chunk the estimate and the realised metric are computed and ``std`` is the standard deviation
   (ddof 0) of ``estimated - realised`` over those chunks.  :meth:`CBPE.estimate` reports
   ``lower`` / ``upper`` = estimate -/+ ``n_sigma`` * std (scaled by ``sqrt(chunk_size / n)`` for a
   window of ``n`` rows; clipped to [0, 1]).  The realised metric's reference mean and std over
   the same chunks are kept too (``reference``), the usual alert thresholds.

The estimate is only as good as the assumption behind it: the calibration learnt on the
reference holds on the window (covariate shift without concept shift).  Labels, when they
arrive, give the realised metric (:func:`realised_metrics`) to compare with.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

__all__ = ["METRICS", "CBPE", "expected_calibration_error", "expected_confusion",
           "expected_metrics", "expected_roc_auc", "metric_name", "realised_metrics", "roc_auc"]

METRICS = ("roc_auc", "accuracy", "precision", "recall", "specificity", "f1")
_ALIASES = {"auc": "roc_auc", "roc_auc": "roc_auc", "accuracy": "accuracy",
            "precision": "precision", "recall": "recall", "specificity": "specificity", "f1": "f1"}


def metric_name(name: str) -> str:
    """The canonical name of a metric (``"auc"`` is ``"roc_auc"``); a clear error otherwise."""
    try:
        return _ALIASES[name]
    except KeyError:
        raise ValueError(f"metric must be one of {sorted(_ALIASES)}, got {name!r}") from None


def _probs(x, name: str) -> np.ndarray:
    p = np.asarray(x, np.float64).ravel()
    if p.size and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise ValueError(f"{name}: probabilities must be finite and in [0, 1]")
    return p


def _labels(y, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y).ravel()
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise ValueError(f"{name}: labels must not be missing (drop unlabelled rows first)")
    vals = set(np.unique(y).tolist())
    if not vals <= {0, 1}:
        raise ValueError(f"{name}: binary labels must be 0/1, got values {sorted(vals)[:5]}")
    return y.astype(np.int64)


# ----------------------------------------------------------------------------- metrics
def _auc_from_curve(pos_w: np.ndarray, neg_w: np.ndarray, scores: np.ndarray) -> float | None:
    """Trapezoid area of the ROC curve with per-row positive / negative weights, ties grouped."""
    order = np.argsort(-scores, kind="stable")
    s, pw, nw = scores[order], pos_w[order], neg_w[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # end of each tie group
    tp, fp = np.cumsum(pw)[last], np.cumsum(nw)[last]
    if tp.size == 0 or tp[-1] <= 0 or fp[-1] <= 0:
        return None
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return float(np.trapezoid(tpr, fpr))


def roc_auc(y_true, scores) -> float | None:
    """Realised ROC-AUC (equals ``sklearn.metrics.roc_auc_score``); None with one class only."""
    y = _labels(y_true).astype(np.float64)
    return _auc_from_curve(y, 1.0 - y, np.asarray(scores, np.float64).ravel())


def expected_roc_auc(probs, scores=None) -> float | None:
    """Expected ROC-AUC from calibrated probabilities ``probs`` for rows ranked by ``scores``
    (default: ``probs``); None when the expected positives or negatives are zero."""
    p = _probs(probs, "probs")
    s = p if scores is None else np.asarray(scores, np.float64).ravel()
    if s.shape != p.shape:
        raise ValueError(f"scores has shape {s.shape}, probs {p.shape}")
    return _auc_from_curve(p, 1.0 - p, s)


def expected_confusion(probs, predicted) -> dict:
    """``{"tp", "fp", "fn", "tn"}``: expected counts from calibrated probabilities and 0/1 predictions."""
    p = _probs(probs, "probs")
    yhat = np.asarray(predicted).ravel().astype(bool)
    if yhat.shape != p.shape:
        raise ValueError(f"predicted has shape {yhat.shape}, probs {p.shape}")
    return {"tp": float(p[yhat].sum()), "fp": float((1 - p[yhat]).sum()),
            "fn": float(p[~yhat].sum()), "tn": float((1 - p[~yhat]).sum())}


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def _from_confusion(c: Mapping[str, float]) -> dict:
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    n = tp + fp + fn + tn
    return {"accuracy": _ratio(tp + tn, n), "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def expected_metrics(probs, predicted, scores=None) -> dict:
    """Expected metrics of :data:`METRICS` (see the module docstring); None where undefined."""
    p = _probs(probs, "probs")
    if p.size == 0:
        return {m: None for m in METRICS}
    out = _from_confusion(expected_confusion(p, predicted))
    return {"roc_auc": expected_roc_auc(p, scores), **out}


def realised_metrics(y_true, predicted, scores) -> dict:
    """The same metrics computed from labels; None where undefined (e.g. AUC with one class)."""
    y = _labels(y_true)
    yhat = np.asarray(predicted).ravel().astype(bool)
    if y.size == 0:
        return {m: None for m in METRICS}
    pos = y.astype(bool)
    c = {"tp": float(np.sum(yhat & pos)), "fp": float(np.sum(yhat & ~pos)),
         "fn": float(np.sum(~yhat & pos)), "tn": float(np.sum(~yhat & ~pos))}
    return {"roc_auc": roc_auc(y, scores), **_from_confusion(c)}


def expected_calibration_error(y_true, probs, bin_count: int = 10) -> float:
    """ECE over ``bin_count`` equal-count bins of the sorted probabilities:
    ``sum_b |mean(y_b) - mean(p_b)| * n_b / n``."""
    y = _labels(y_true).astype(np.float64)
    p = _probs(probs, "probs")
    if y.size != p.size:
        raise ValueError(f"y_true has {y.size} rows, probs {p.size}")
    order = np.argsort(p, kind="stable")
    err = 0.0
    for idx in np.array_split(order, min(bin_count, max(p.size, 1))):
        if idx.size:
            err += abs(y[idx].mean() - p[idx].mean()) * idx.size
    return float(err / max(p.size, 1))


# ----------------------------------------------------------------------------- calibrators
class _Histogram:
    """Observed positive rate per equal-count bin of the scores (edges at score quantiles)."""

    def __init__(self, bin_count: int = 10):
        self.bin_count = bin_count
        self.edges: list = []
        self.rates: list = []

    def fit(self, scores, y) -> "_Histogram":
        s, y = np.asarray(scores, np.float64), np.asarray(y, np.float64)
        edges = np.unique(np.quantile(s, np.linspace(0, 1, self.bin_count + 1)[1:-1]))
        b = np.searchsorted(edges, s, side="right")
        cnt = np.bincount(b, minlength=edges.size + 1)
        pos = np.bincount(b, weights=y, minlength=edges.size + 1)
        rate = np.where(cnt > 0, pos / np.maximum(cnt, 1), y.mean())
        self.edges, self.rates = edges.tolist(), rate.tolist()
        return self

    def predict(self, scores) -> np.ndarray:
        b = np.searchsorted(np.asarray(self.edges), np.asarray(scores, np.float64), side="right")
        return np.asarray(self.rates)[b]

    def to_dict(self) -> dict:
        return {"kind": "histogram", "edges": self.edges, "rates": self.rates}


class _Isotonic:
    """Isotonic regression of the labels on the scores (sklearn), stored as its knots."""

    def __init__(self):
        self.x: list = []
        self.y: list = []

    def fit(self, scores, y) -> "_Isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(np.asarray(scores, np.float64), np.asarray(y, np.float64))
        self.x, self.y = iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist()
        return self

    def predict(self, scores) -> np.ndarray:
        # sklearn's IsotonicRegression.predict is this linear interpolation between its knots,
        # clipped at the ends (out_of_bounds="clip").
        return np.interp(np.asarray(scores, np.float64), self.x, self.y)

    def to_dict(self) -> dict:
        return {"kind": "isotonic", "x": self.x, "y": self.y}


def _make_calibrator(kind: str, bin_count: int):
    if kind == "isotonic":
        return _Isotonic()
    if kind == "histogram":
        return _Histogram(bin_count)
    raise ValueError(f"calibrator must be 'isotonic' or 'histogram', got {kind!r}")


def _calibrator_from_dict(d: Mapping | None):
    if d is None:
        return None
    if d["kind"] == "isotonic":
        c = _Isotonic()
        c.x, c.y = list(d["x"]), list(d["y"])
        return c
    c = _Histogram()
    c.edges, c.rates = list(d["edges"]), list(d["rates"])
    return c


# ----------------------------------------------------------------------------- CBPE
@dataclasses.dataclass
class CBPE:
    """Confidence-based performance estimation for a binary classifier (module docstring).

    ``threshold``: the model's decision threshold on the score (predicted class is
    ``score >= threshold``) when predicted classes are not given.
    """

    threshold: float = 0.5
    calibration: str = "auto"
    calibrator: str = "isotonic"
    chunk_size: int = 5000
    n_sigma: float = 3.0
    bin_count: int = 10
    n_splits: int = 10
    seed: int = 42
    # set by fit
    calibrated: bool = False
    ece_improvement: float | None = None
    std: dict = dataclasses.field(default_factory=dict)
    reference: dict = dataclasses.field(default_factory=dict)
    _cal: object = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.calibration not in ("auto", "always", "never"):
            raise ValueError(f"calibration must be 'auto', 'always' or 'never', got {self.calibration!r}")
        _make_calibrator(self.calibrator, self.bin_count)  # validates the name
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.chunk_size < 2:
            raise ValueError(f"chunk_size must be >= 2, got {self.chunk_size}")

    @property
    def fitted(self) -> bool:
        return bool(self.std)

    # -- fitting
    def _needs_calibration(self, y: np.ndarray, s: np.ndarray) -> float:
        """Mean ECE improvement of calibrating, over stratified 90/10 shuffle splits."""
        from sklearn.model_selection import StratifiedShuffleSplit

        split = StratifiedShuffleSplit(n_splits=self.n_splits, test_size=0.1, random_state=self.seed)
        gains = []
        for tr, te in split.split(s.reshape(-1, 1), y):
            cal = _make_calibrator(self.calibrator, self.bin_count).fit(s[tr], y[tr])
            gains.append(expected_calibration_error(y[te], s[te], self.bin_count)
                         - expected_calibration_error(y[te], cal.predict(s[te]), self.bin_count))
        return float(np.mean(gains))

    def fit(self, y_true, scores, predicted=None) -> "CBPE":
        """Fits on reference rows with known labels (rows the model was not trained on)."""
        y = _labels(y_true)
        s = _probs(scores, "scores")
        if y.size != s.size:
            raise ValueError(f"y_true has {y.size} rows, scores {s.size}")
        if np.unique(y).size < 2:
            raise ValueError("y_true: the reference needs both classes to calibrate and estimate")
        if y.size < 2 * self.chunk_size:
            raise ValueError(f"the reference has {y.size} rows; at least 2 chunks of "
                             f"chunk_size={self.chunk_size} are needed for the confidence band")
        yhat = self._predicted(s, predicted)
        if self.calibration == "never":
            self.calibrated, self.ece_improvement = False, None
        else:
            self.ece_improvement = self._needs_calibration(y, s)
            self.calibrated = self.calibration == "always" or self.ece_improvement > 0
        self._cal = _make_calibrator(self.calibrator, self.bin_count).fit(s, y) if self.calibrated else None
        diffs = {m: [] for m in METRICS}
        real = {m: [] for m in METRICS}
        for lo in range(0, y.size - self.chunk_size + 1, self.chunk_size):
            sl = slice(lo, lo + self.chunk_size)
            est = self._estimate_point(s[sl], yhat[sl])
            rea = realised_metrics(y[sl], yhat[sl], s[sl])
            for m in METRICS:
                if est[m] is not None and rea[m] is not None:
                    diffs[m].append(est[m] - rea[m])
                    real[m].append(rea[m])
        self.std = {m: float(np.std(d)) if d else None for m, d in diffs.items()}
        self.reference = {m: {"mean": float(np.mean(r)) if r else None,
                              "std": float(np.std(r)) if r else None,
                              "n_chunks": len(r)} for m, r in real.items()}
        return self

    # -- estimating
    def _predicted(self, s: np.ndarray, predicted) -> np.ndarray:
        if predicted is None:
            return s >= self.threshold
        yhat = np.asarray(predicted).ravel()
        if yhat.shape != s.shape:
            raise ValueError(f"predicted has shape {yhat.shape}, scores {s.shape}")
        return yhat.astype(bool)

    def calibrate(self, scores) -> np.ndarray:
        """The calibrated probabilities of ``scores`` (the scores themselves when not calibrating)."""
        s = _probs(scores, "scores")
        return self._cal.predict(s) if self._cal is not None else s

    def _estimate_point(self, s: np.ndarray, yhat: np.ndarray) -> dict:
        return expected_metrics(self.calibrate(s), yhat, scores=s)

    def estimate(self, scores, predicted=None) -> dict:
        """Per metric of :data:`METRICS`: ``{"value", "std", "lower", "upper"}`` for one window
        (no labels needed), plus ``n`` and ``calibrated``."""
        if not self.fitted:
            raise RuntimeError("CBPE.estimate before fit: fit it on the labelled reference first")
        s = _probs(scores, "scores")
        point = self._estimate_point(s, self._predicted(s, predicted))
        scale = np.sqrt(self.chunk_size / s.size) if s.size else None
        out = {"n": int(s.size), "calibrated": self.calibrated}
        for m in METRICS:
            v, sd = point[m], self.std.get(m)
            if v is None or sd is None:
                out[m] = {"value": v, "std": None, "lower": None, "upper": None}
                continue
            sd = sd * scale
            out[m] = {"value": v, "std": float(sd), "lower": float(max(0.0, v - self.n_sigma * sd)),
                      "upper": float(min(1.0, v + self.n_sigma * sd))}
        return out

    def estimate_chunks(self, scores, predicted=None, chunk_size: int | None = None) -> list:
        """:meth:`estimate` for each consecutive chunk (a last partial chunk is dropped)."""
        cs = chunk_size or self.chunk_size
        s = _probs(scores, "scores")
        yhat = None if predicted is None else np.asarray(predicted).ravel()
        return [self.estimate(s[lo:lo + cs], None if yhat is None else yhat[lo:lo + cs])
                for lo in range(0, s.size - cs + 1, cs)]

    # -- persistence
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "_cal"}
        d["calibration_map"] = self._cal.to_dict() if self._cal is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "CBPE":
        d = dict(d)
        cal = _calibrator_from_dict(d.pop("calibration_map", None))
        self = cls(**d)
        self._cal = cal
        return self
