"""Mergeable (streaming) metric accumulators for whole-split evaluation.

A metric is split into three steps so that global metrics (AUC, log-loss, F1, WER, ...) are exact
over a whole split while the heavy work stays on device::

    state_b = metric.update(outputs, batch, weights)   # pure JAX, jit-able -> pytree of arrays
    acc = metric.merge(acc, state_b)                   # NumPy on the host; acc is None at start
    value = metric.compute(acc)                        # python float

* ``outputs`` is the dict of named model outputs, ``batch`` the dict of input arrays (labels
  included). A key named by a metric is looked up in ``outputs`` first, then in ``batch``.
* ``weights`` is a float ``[B]`` array: 0 marks a padding row, otherwise the example's sample
  weight. A row counts iff its weight is ``> 0``; padding rows may hold anything (NaN included)
  and are dropped with ``jnp.where`` so they never change a state.
* States are pytrees of arrays. On device they are float32 (sums) or per-example arrays; ``merge``
  moves them to NumPy and accumulates sums in float64. The default ``merge`` adds states
  elementwise; metrics that keep examples (exact AUC / average precision) concatenate them.
* ``compute`` returns ``nan`` when a metric is undefined (no counted example, a single class for
  AUC, no positive for average precision, no reference token for WER).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Metric",
    "evaluate_arrays",
    "accumulate",
    "jitted_update",
    "PerExampleMean",
    "Mean",
    "LogLoss",
    "Accuracy",
    "TopKAccuracy",
    "Precision",
    "Recall",
    "F1",
    "ExpectedCalibrationError",
    "RMSE",
    "MAE",
    "BinaryAUC",
    "AveragePrecision",
    "WordErrorRate",
    "CharErrorRate",
    "levenshtein",
]

State = Any


# ------------------------------------------------------------------------------------ helpers
def _valid(weights, n: int):
    """``(valid [B] bool, weights [B] float32 with 0 on invalid rows)``."""
    if weights is None:
        return jnp.ones((n,), bool), jnp.ones((n,), jnp.float32)
    w = jnp.asarray(weights, jnp.float32)
    if w.shape != (n,):
        raise ValueError(f"weights: expected shape ({n},) (one per example), got {w.shape}")
    valid = w > 0  # False for NaN too
    return valid, jnp.where(valid, w, 0.0)


def _mask_rows(valid, x, fill=0):
    """``x`` with every row of an invalid example replaced by ``fill``."""
    v = valid.reshape(valid.shape + (1,) * (x.ndim - 1))
    return jnp.where(v, x, jnp.asarray(fill, x.dtype))


def _wsum(w, x):
    """Weighted sum over the batch axis (``x`` already cleaned of invalid rows)."""
    return jnp.tensordot(w, x.astype(jnp.float32), axes=(0, 0))


def _host_sum_state(state):
    """A sum state as float64 NumPy arrays."""
    return jax.tree.map(lambda x: np.asarray(x, np.float64), state)


def _ratio(num, den) -> float:
    num, den = float(num), float(den)
    return num / den if den != 0 else float("nan")


def _binary_positive(label):
    """Binary labels: positive iff ``label > 0.5`` (0/1, bool and -1/+1 labels all work)."""
    return jnp.asarray(label).astype(jnp.float32) > 0.5


def _as_vector(x, name: str, field: str):
    """``[B]`` or ``[B, 1]`` -> ``[B]``; anything else raises naming the field."""
    x = jnp.asarray(x)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"{name}.{field}: expected a [B] (or [B, 1]) array, got shape {x.shape}")
    return x


# --------------------------------------------------------------------------------------- base
@dataclasses.dataclass(frozen=True)
class Metric:
    """Base class: ``update`` (JAX, per batch) -> ``merge`` (NumPy) -> ``compute`` (float)."""

    def update(self, outputs, batch, weights) -> State:
        """Per-batch state (a pytree of arrays) from one batch; pure and jit-able."""
        raise NotImplementedError

    def merge(self, a: Optional[State], b: State) -> State:
        """Accumulated state ``a`` (``None`` at the start) combined with batch state ``b``."""
        b = _host_sum_state(b)
        if a is None:
            return b
        return jax.tree.map(np.add, a, b)

    def compute(self, state: Optional[State]) -> float:
        """The metric value of an accumulated state."""
        raise NotImplementedError

    def _get(self, outputs, batch, field: str):
        """The array named by the constructor argument ``field`` (outputs first, then batch)."""
        key = getattr(self, field)
        if isinstance(outputs, Mapping) and key in outputs:
            return outputs[key]
        if isinstance(batch, Mapping) and key in batch:
            return batch[key]
        have_o = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
        have_b = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise KeyError(f"{type(self).__name__}.{field}={key!r} is neither a model output "
                       f"({have_o}) nor a batch key ({have_b})")


def _slice_tree(tree, lo: int, hi: int, pad_to: Optional[int]):
    """Rows ``lo:hi`` of every array in ``tree``; zero rows appended up to ``pad_to``."""
    def one(x):
        x = np.asarray(x)[lo:hi]
        if pad_to is not None and x.shape[0] < pad_to:
            pad = np.zeros((pad_to - x.shape[0],) + x.shape[1:], x.dtype)
            x = np.concatenate([x, pad])
        return x
    return jax.tree.map(one, tree)


@functools.lru_cache(maxsize=256)
def jitted_update(metric: Metric):
    """``jax.jit(metric.update)``, cached per (hashable, frozen) metric so repeated evaluations
    of the same metric reuse its compiled updates."""
    return jax.jit(metric.update)


def accumulate(metric: Metric, outputs, batch, weights=None,
               batch_size: Optional[int] = None) -> State:
    """The merged state of ``metric`` over NumPy arrays, updated (jitted) chunk by chunk.

    Every array in ``outputs`` and ``batch`` has the example axis first. ``weights`` defaults to
    ones. The last chunk is padded with weight-0 rows to ``batch_size`` so the update compiles
    once. ``batch_size=None`` updates everything in one chunk.
    """
    leaves = jax.tree.leaves((outputs, batch))
    if weights is None and not leaves:
        raise ValueError("accumulate: no arrays in outputs or batch and no weights")
    n = len(np.asarray(weights)) if weights is not None else len(np.asarray(leaves[0]))
    w = np.ones((n,), np.float32) if weights is None else np.asarray(weights, np.float32)
    size = n if batch_size is None else int(batch_size)
    if size <= 0:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    try:
        update = jitted_update(metric)
    except TypeError:  # a metric holding an unhashable field
        update = jax.jit(metric.update)
    acc = None
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        o, b, wb = _slice_tree((outputs, batch, w), lo, hi, pad_to=size)
        acc = metric.merge(acc, jax.device_get(update(o, b, wb)))
    return acc


def evaluate_arrays(metric: Metric, outputs, batch, weights=None,
                    batch_size: Optional[int] = None) -> float:
    """``metric.compute`` of :func:`accumulate` (update / merge over chunks of NumPy arrays)."""
    return metric.compute(accumulate(metric, outputs, batch, weights, batch_size))


# ------------------------------------------------------------------------------------- means
def _mean_state(values, weights, name: str):
    """``(sum w * value, sum w)`` of per-example values ``[B]``, invalid rows dropped."""
    values = jnp.asarray(values, jnp.float32)
    if values.ndim != 1:
        raise ValueError(f"{name}: expected per-example values of shape [B], got {values.shape}")
    valid, w = _valid(weights, values.shape[0])
    return {"total": jnp.sum(w * jnp.where(valid, values, 0.0)), "weight": jnp.sum(w)}


def _mean_value(state) -> float:
    return float("nan") if state is None else _ratio(state["total"], state["weight"])


@dataclasses.dataclass(frozen=True)
class PerExampleMean(Metric):
    """Weighted mean of a per-example value ``fn(outputs, batch) -> [B]``.

    Wraps the per-list ranking metrics, e.g.
    ``PerExampleMean(lambda s, b: ndcg_metric(s, b["label"], where=b["mask"], topn=10,
    reduce_fn=None))``. State: ``(sum w * value, sum w)``.
    """

    fn: Callable[[Any, Any], Any]

    def update(self, outputs, batch, weights):
        return _mean_state(self.fn(outputs, batch), weights, "PerExampleMean.fn")

    def compute(self, state):
        return _mean_value(state)


@dataclasses.dataclass(frozen=True)
class Mean(Metric):
    """Weighted mean of a named per-example output or batch array ``[B]`` (``Mean("loss")``)."""

    key: str = "loss"

    def update(self, outputs, batch, weights):
        values = _as_vector(self._get(outputs, batch, "key"), "Mean", "key")
        return _mean_state(values, weights, "Mean.key")

    def compute(self, state):
        return _mean_value(state)


# ---------------------------------------------------------------------- binary probabilities
@dataclasses.dataclass(frozen=True)
class LogLoss(Metric):
    """Binary cross-entropy, averaged with sample weights (as ``sklearn.metrics.log_loss``).

    ``pred`` holds probabilities of the positive class (``from_logits=False``) or logits. As in
    scikit-learn, probabilities are clipped to ``[eps, 1 - eps]`` with ``eps`` the machine epsilon
    of the device dtype (float32) unless given; from logits the log-probabilities are computed
    stably and clipped to the same range. Labels are used as given (0/1, or soft targets in
    ``[0, 1]``). State: ``(sum w * loss, sum w)``.
    """

    pred: str = "prob"
    label: str = "label"
    from_logits: bool = False
    eps: Optional[float] = None

    def update(self, outputs, batch, weights):
        x = _as_vector(self._get(outputs, batch, "pred"), "LogLoss", "pred").astype(jnp.float32)
        y = _as_vector(self._get(outputs, batch, "label"), "LogLoss", "label").astype(jnp.float32)
        valid, w = _valid(weights, x.shape[0])
        x, y = jnp.where(valid, x, 0.0), jnp.where(valid, y, 0.0)
        eps = float(np.finfo(np.float32).eps) if self.eps is None else float(self.eps)
        if self.from_logits:
            lo, hi = float(np.log(eps)), float(np.log1p(-eps))
            log_p = jnp.clip(jax.nn.log_sigmoid(x), lo, hi)
            log_q = jnp.clip(jax.nn.log_sigmoid(-x), lo, hi)
        else:
            log_p = jnp.log(jnp.clip(x, eps, 1.0 - eps))
            log_q = jnp.log(jnp.clip(1.0 - x, eps, 1.0 - eps))
        loss = -(y * log_p + (1.0 - y) * log_q)
        return {"total": jnp.sum(w * loss), "weight": jnp.sum(w)}

    def compute(self, state):
        return _mean_value(state)


def _logit(p: float) -> float:
    """The logit of a probability threshold (``+-inf`` at 1 / 0)."""
    with np.errstate(divide="ignore"):
        return float(np.log(p) - np.log1p(-p))


def _binary_predictions(x, threshold: float, from_logits: bool):
    """Predicted positive iff ``prob > threshold`` (compared in logit space from logits)."""
    return x > (_logit(threshold) if from_logits else threshold)


def _class_ids(metric, outputs, batch, valid):
    """``(predicted ids, label ids)`` for multiclass ``pred [B, C]`` (argmax, first max wins).

    Labels are integer ids ``[B]``, or one-hot / probability rows ``[B, C]`` (argmax). Invalid
    rows get id 0.
    """
    name = type(metric).__name__
    x = jnp.asarray(metric._get(outputs, batch, "pred"))
    if x.ndim != 2:
        raise ValueError(f"{name}.pred: expected multiclass scores [B, C], got {x.shape}")
    pred_id = jnp.where(valid, jnp.argmax(_mask_rows(valid, x), axis=-1), 0)
    y = jnp.asarray(metric._get(outputs, batch, "label"))
    if y.ndim == 2 and y.shape[1] == x.shape[1]:
        y = jnp.argmax(_mask_rows(valid, y), axis=-1)
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name}.label: expected class ids [B] or one-hot [B, {x.shape[1]}], "
                         f"got {y.shape}")
    label_id = jnp.where(valid, _mask_rows(valid, y).astype(jnp.int32), 0)
    return pred_id.astype(jnp.int32), label_id


# -------------------------------------------------------------------------------- accuracies
@dataclasses.dataclass(frozen=True)
class Accuracy(Metric):
    """Weighted accuracy (``sklearn.metrics.accuracy_score``).

    Binary when ``pred`` is ``[B]``: predicted positive iff ``prob > threshold`` (with
    ``from_logits`` the threshold is mapped to a logit); label positive iff ``> 0.5``.
    Multiclass when ``pred`` is ``[B, C]``: argmax (first maximum on ties) against integer labels.
    State: ``(sum w * correct, sum w)``.
    """

    pred: str = "prob"
    label: str = "label"
    threshold: float = 0.5
    from_logits: bool = False

    def update(self, outputs, batch, weights):
        x = jnp.asarray(self._get(outputs, batch, "pred"))
        valid, w = _valid(weights, x.shape[0])
        if x.ndim == 2 and x.shape[1] > 1:
            pred_id, label_id = _class_ids(self, outputs, batch, valid)
            correct = pred_id == label_id
        else:
            x = _as_vector(x, "Accuracy", "pred")
            y = _as_vector(self._get(outputs, batch, "label"), "Accuracy", "label")
            correct = _binary_predictions(x, self.threshold, self.from_logits) == \
                _binary_positive(y)
        correct = jnp.where(valid, correct, False)
        return {"correct": _wsum(w, correct), "weight": jnp.sum(w)}

    def compute(self, state):
        return float("nan") if state is None else _ratio(state["correct"], state["weight"])


@dataclasses.dataclass(frozen=True)
class TopKAccuracy(Metric):
    """Weighted top-k accuracy for multiclass scores ``pred [B, C]`` and integer labels ``[B]``.

    An example is correct iff fewer than ``k`` classes rank above its label, where classes rank
    by score and ties go to the lower class index (so ``k=1`` agrees with argmax accuracy).
    ``sklearn.metrics.top_k_accuracy_score`` breaks ties towards the higher index instead; the two
    agree whenever scores have no ties. State: ``(sum w * correct, sum w)``.
    """

    pred: str = "logits"
    label: str = "label"
    k: int = 5

    def update(self, outputs, batch, weights):
        x = jnp.asarray(self._get(outputs, batch, "pred"))
        if x.ndim != 2:
            raise ValueError(f"TopKAccuracy.pred: expected multiclass scores [B, C], got {x.shape}")
        if self.k < 1:
            raise ValueError(f"TopKAccuracy.k: expected k >= 1, got {self.k}")
        valid, w = _valid(weights, x.shape[0])
        y = _as_vector(self._get(outputs, batch, "label"), "TopKAccuracy", "label")
        x = _mask_rows(valid, x.astype(jnp.float32))
        y = jnp.where(valid, y, 0).astype(jnp.int32)
        y_score = jnp.take_along_axis(x, y[:, None], axis=1)
        cls = jnp.arange(x.shape[1])[None, :]
        above = (x > y_score) | ((x == y_score) & (cls < y[:, None]))
        correct = jnp.where(valid, jnp.sum(above, axis=1) < self.k, False)
        return {"correct": _wsum(w, correct), "weight": jnp.sum(w)}

    def compute(self, state):
        return float("nan") if state is None else _ratio(state["correct"], state["weight"])


# ---------------------------------------------------------------- precision / recall / F1
@dataclasses.dataclass(frozen=True)
class _Confusion(Metric):
    """Confusion counts for precision, recall and F1.

    ``average="binary"`` (default): ``pred [B]`` scores, predicted positive iff
    ``prob > threshold`` (threshold mapped to a logit with ``from_logits``), labels positive iff
    ``> 0.5``. ``average="macro"`` / ``"micro"``: ``pred [B, C]`` (argmax) against integer labels,
    ``num_classes`` required. Macro averages over the classes seen in labels or predictions
    (weighted count > 0), like scikit-learn with ``labels=None``; micro pools the counts. A
    0/0 ratio is 0 (scikit-learn's ``zero_division`` default). State: weighted ``tp, fp, fn``
    (scalars for binary, ``[C]`` per class otherwise).
    """

    pred: str = "prob"
    label: str = "label"
    threshold: float = 0.5
    from_logits: bool = False
    average: str = "binary"
    num_classes: Optional[int] = None

    def __post_init__(self):
        if self.average not in ("binary", "macro", "micro"):
            raise ValueError(f"{type(self).__name__}.average: expected 'binary', 'macro' or "
                             f"'micro', got {self.average!r}")
        if self.average != "binary" and not (isinstance(self.num_classes, int)
                                             and self.num_classes >= 2):
            raise ValueError(f"{type(self).__name__}.num_classes: average={self.average!r} needs "
                             f"the number of classes (int >= 2), got {self.num_classes!r}")

    def update(self, outputs, batch, weights):
        name = type(self).__name__
        x = jnp.asarray(self._get(outputs, batch, "pred"))
        valid, w = _valid(weights, x.shape[0])
        if self.average == "binary":
            x = _as_vector(x, name, "pred")
            y = _as_vector(self._get(outputs, batch, "label"), name, "label")
            p = jnp.where(valid, _binary_predictions(x, self.threshold, self.from_logits),
                          False)
            t = jnp.where(valid, _binary_positive(y), False)
        else:
            if x.ndim != 2 or x.shape[1] != self.num_classes:
                raise ValueError(f"{name}.pred: expected scores [B, {self.num_classes}] "
                                 f"(num_classes), got {x.shape}")
            pred_id, label_id = _class_ids(self, outputs, batch, valid)
            p = jax.nn.one_hot(pred_id, self.num_classes, dtype=bool)
            t = jax.nn.one_hot(label_id, self.num_classes, dtype=bool)
        return {"tp": _wsum(w, p & t), "fp": _wsum(w, p & ~t), "fn": _wsum(w, ~p & t)}

    def _values(self, state):
        """``(precision, recall, f1)`` arrays (per class for macro) and the classes to average."""
        tp, fp, fn = (np.asarray(state[k], np.float64) for k in ("tp", "fp", "fn"))
        if self.average == "micro":
            tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
        div = lambda a, b: np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b != 0)
        prec, rec = div(tp, tp + fp), div(tp, tp + fn)
        f1 = div(2 * tp, 2 * tp + fp + fn)
        seen = (tp + fp + fn) > 0
        return prec, rec, f1, seen

    def _reduce(self, values, seen) -> float:
        if self.average == "macro":
            return float(values[seen].mean()) if seen.any() else 0.0
        return float(values)

    def compute(self, state):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Precision(_Confusion):
    __doc__ = "Precision ``tp / (tp + fp)`` (``sklearn.metrics.precision_score``).\n\n" + \
        (_Confusion.__doc__ or "")

    def compute(self, state):
        if state is None:
            return float("nan")
        prec, _, _, seen = self._values(state)
        return self._reduce(prec, seen)


@dataclasses.dataclass(frozen=True)
class Recall(_Confusion):
    __doc__ = "Recall ``tp / (tp + fn)`` (``sklearn.metrics.recall_score``).\n\n" + \
        (_Confusion.__doc__ or "")

    def compute(self, state):
        if state is None:
            return float("nan")
        _, rec, _, seen = self._values(state)
        return self._reduce(rec, seen)


@dataclasses.dataclass(frozen=True)
class F1(_Confusion):
    __doc__ = "F1 ``2 tp / (2 tp + fp + fn)`` (``sklearn.metrics.f1_score``).\n\n" + \
        (_Confusion.__doc__ or "")

    def compute(self, state):
        if state is None:
            return float("nan")
        _, _, f1, seen = self._values(state)
        return self._reduce(f1, seen)


# ---------------------------------------------------------------------------- calibration
def _bin_index(p, bins: int):
    """Equal-width bin of a probability: ``floor(p * bins)`` clipped to ``[0, bins - 1]``.

    Monotone in ``p`` (bins never reorder scores); values outside ``[0, 1]`` land in the edge
    bins, ``p = 1`` in the last one.
    """
    return jnp.clip(jnp.floor(p * bins), 0, bins - 1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ExpectedCalibrationError(Metric):
    """Expected calibration error over ``bins`` equal-width confidence bins on ``[0, 1]``.

    ``ECE = sum_b (W_b / W) |acc_b - conf_b|`` with ``W_b`` the weight in bin ``b``.
    Binary (``pred [B]``): the confidence is the predicted probability of the positive class and
    ``acc_b`` the (weighted) fraction of positive labels, i.e. the reliability diagram of
    ``sklearn.calibration.calibration_curve``. Multiclass (``pred [B, C]``): top-label ECE,
    confidence = max class probability, accuracy = argmax is the label. ``from_logits`` applies
    a sigmoid / softmax. A probability ``p`` falls in bin ``min(floor(p * bins), bins - 1)``.
    State: per-bin sums ``weight [bins]``, ``conf [bins]``, ``acc [bins]``.
    """

    pred: str = "prob"
    label: str = "label"
    bins: int = 15
    from_logits: bool = False

    def update(self, outputs, batch, weights):
        x = jnp.asarray(self._get(outputs, batch, "pred")).astype(jnp.float32)
        valid, w = _valid(weights, x.shape[0])
        x = _mask_rows(valid, x)
        if x.ndim == 2 and x.shape[1] > 1:
            prob = jax.nn.softmax(x, axis=-1) if self.from_logits else x
            pred_id, label_id = _class_ids(self, outputs, batch, valid)
            conf = jnp.max(prob, axis=-1)
            acc = (pred_id == label_id).astype(jnp.float32)
        else:
            x = _as_vector(x, "ExpectedCalibrationError", "pred")
            conf = jax.nn.sigmoid(x) if self.from_logits else x
            y = _as_vector(self._get(outputs, batch, "label"), "ExpectedCalibrationError", "label")
            acc = _binary_positive(y).astype(jnp.float32)
        conf, acc = jnp.where(valid, conf, 0.0), jnp.where(valid, acc, 0.0)
        idx = _bin_index(conf, self.bins)
        zeros = jnp.zeros((self.bins,), jnp.float32)
        return {"weight": zeros.at[idx].add(w), "conf": zeros.at[idx].add(w * conf),
                "acc": zeros.at[idx].add(w * acc)}

    def compute(self, state):
        if state is None:
            return float("nan")
        total = float(np.sum(state["weight"]))
        gap = np.abs(np.asarray(state["acc"], np.float64) - np.asarray(state["conf"], np.float64))
        return _ratio(gap.sum(), total)


# ------------------------------------------------------------------------------ regression
@dataclasses.dataclass(frozen=True)
class _ErrorMean(Metric):
    """Weighted mean of an elementwise error of ``pred`` against ``label``.

    ``pred`` and ``label`` are ``[B]`` or ``[B, ...]`` of the same shape; every element of an
    example carries the example's weight, so for several outputs the value is the
    ``uniform_average`` over outputs. State: ``(sum w * error, sum w * elements)``.
    """

    pred: str = "pred"
    label: str = "label"

    def _error(self, diff):
        raise NotImplementedError

    def update(self, outputs, batch, weights):
        name = type(self).__name__
        x = jnp.asarray(self._get(outputs, batch, "pred"), jnp.float32)
        y = jnp.asarray(self._get(outputs, batch, "label"), jnp.float32)
        if x.ndim == 2 and x.shape[1] == 1 and y.ndim == 1:
            x = x[:, 0]
        if x.shape != y.shape:
            raise ValueError(f"{name}.pred: shape {x.shape} does not match label shape {y.shape}")
        valid, w = _valid(weights, x.shape[0])
        err = self._error(_mask_rows(valid, x) - _mask_rows(valid, y))
        per_example = jnp.sum(err.reshape(err.shape[0], -1), axis=1)
        n_el = float(np.prod(x.shape[1:], dtype=np.int64))
        return {"total": jnp.sum(w * per_example), "weight": jnp.sum(w) * n_el}


@dataclasses.dataclass(frozen=True)
class RMSE(_ErrorMean):
    __doc__ = "Root mean squared error (``sqrt(sklearn.metrics.mean_squared_error)``); over " \
        "several outputs it is the root of the pooled MSE.\n\n" + (_ErrorMean.__doc__ or "")

    def _error(self, diff):
        return diff * diff

    def compute(self, state):
        return float("nan") if state is None else float(np.sqrt(_ratio(state["total"],
                                                                        state["weight"])))


@dataclasses.dataclass(frozen=True)
class MAE(_ErrorMean):
    __doc__ = "Mean absolute error (``sklearn.metrics.mean_absolute_error``).\n\n" + \
        (_ErrorMean.__doc__ or "")

    def _error(self, diff):
        return jnp.abs(diff)

    def compute(self, state):
        return float("nan") if state is None else _ratio(state["total"], state["weight"])


# ------------------------------------------------------------------------------ AUC and AP
def _roc_auc(pos, neg) -> float:
    """ROC-AUC from per-group positive/negative weights, groups in descending score order.

    Each group is one distinct score (or one bin): the curve has a vertex per group and the area
    is the trapezoid rule, so pairs tied within a group count 1/2 (as scikit-learn).
    """
    tps = np.concatenate([[0.0], np.cumsum(pos)])
    fps = np.concatenate([[0.0], np.cumsum(neg)])
    if tps[-1] <= 0 or fps[-1] <= 0:
        return float("nan")
    area = np.sum(np.diff(fps) * (tps[1:] + tps[:-1]) / 2.0)
    return float(area / (tps[-1] * fps[-1]))


def _average_precision(pos, neg) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over groups in descending score order
    (``sklearn.metrics.average_precision_score``, no interpolation)."""
    tps, fps = np.cumsum(pos), np.cumsum(neg)
    if tps.size == 0 or tps[-1] <= 0:
        return float("nan")
    prec = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=(tps + fps) > 0)
    return float(np.sum(np.asarray(pos) / tps[-1] * prec))


def _auc_error_bound(pos, neg) -> float:
    """Bound on |binned - exact| ROC-AUC: pairs sharing a bin count 1/2 but may be ordered."""
    P, N = np.sum(pos), np.sum(neg)
    if P <= 0 or N <= 0:
        return float("nan")
    return float(0.5 * np.sum(np.asarray(pos) * np.asarray(neg)) / (P * N))


def _ap_error_bound(pos, neg) -> float:
    """Bound on |binned - exact| average precision.

    With ``T_b, F_b`` the positive/negative weight in bins ``1..b`` (descending), every exact
    precision of a positive in bin ``b`` lies in ``[T_{b-1} / (T_{b-1} + F_b),
    T_b / (T_b + F_{b-1})]``, and so does the binned one ``T_b / (T_b + F_b)``. The bound is
    ``sum_b (p_b / P) * (the largest distance from the binned precision to either end)``.
    """
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    T, F = np.cumsum(pos), np.cumsum(neg)
    if T.size == 0 or T[-1] <= 0:
        return float("nan")
    T0, F0 = np.concatenate([[0.0], T[:-1]]), np.concatenate([[0.0], F[:-1]])
    ratio = lambda a, b: np.divide(a, b, out=np.ones_like(a), where=b > 0)
    lo, hi, mid = ratio(T0, T0 + F), ratio(T, T + F0), ratio(T, T + F)
    return float(np.sum(pos / T[-1] * np.maximum(hi - mid, mid - lo)))


def _example_chunks(state):
    """An exact-mode state as lists of host chunks, rows of weight 0 dropped."""
    if isinstance(state["score"], list):
        return state
    w = np.asarray(state["weight"], np.float64).reshape(-1)
    keep = w > 0  # padding (and weight-0 rows) add nothing to either curve
    return {"score": [np.asarray(state["score"], np.float64).reshape(-1)[keep]],
            "positive": [np.asarray(state["positive"], bool).reshape(-1)[keep]],
            "weight": [w[keep]]}


@dataclasses.dataclass(frozen=True)
class _RankingCurve(Metric):
    """Shared state handling of :class:`BinaryAUC` and :class:`AveragePrecision`."""

    pred: str = "prob"
    label: str = "label"
    from_logits: bool = False
    bins: Optional[int] = None

    def __post_init__(self):
        if self.bins is not None and not (isinstance(self.bins, int) and self.bins >= 1):
            raise ValueError(f"{type(self).__name__}.bins: expected None (exact) or an int >= 1, "
                             f"got {self.bins!r}")

    def update(self, outputs, batch, weights):
        name = type(self).__name__
        x = _as_vector(self._get(outputs, batch, "pred"), name, "pred").astype(jnp.float32)
        y = _as_vector(self._get(outputs, batch, "label"), name, "label")
        valid, w = _valid(weights, x.shape[0])
        x = jnp.where(valid, x, 0.0)
        pos = jnp.where(valid, _binary_positive(y), False)
        if self.bins is None:  # exact: keep the examples (logits are as good as probabilities)
            return {"score": x, "positive": pos, "weight": w}
        prob = jax.nn.sigmoid(x) if self.from_logits else x
        idx = _bin_index(prob, self.bins)
        zeros = jnp.zeros((self.bins,), jnp.float32)
        return {"pos": zeros.at[idx].add(jnp.where(pos, w, 0.0)),
                "neg": zeros.at[idx].add(jnp.where(pos, 0.0, w))}

    def merge(self, a, b):
        """Binned: histogram sums. Exact: the examples of ``a`` and ``b`` with weight > 0, kept
        as a list of chunks per field (concatenated once, in ``compute``, so accumulating a
        split costs linear time)."""
        if self.bins is not None:
            return super().merge(a, b)
        b = _example_chunks(b)
        if a is None:
            return b
        return {k: a[k] + b[k] for k in b}

    def _examples(self, state):
        """``(score, positive, weight)`` arrays of an exact state (from update or merge)."""
        state = _example_chunks(state)
        return tuple(np.concatenate(state[k]) if state[k] else np.zeros(0, dtype)
                     for k, dtype in (("score", np.float64), ("positive", bool),
                                      ("weight", np.float64)))

    def groups(self, state):
        """``(pos, neg)`` weights per score group, in descending score order."""
        if self.bins is not None:
            return (np.asarray(state["pos"], np.float64)[::-1],
                    np.asarray(state["neg"], np.float64)[::-1])
        score, positive, w = self._examples(state)
        pos_w = np.where(positive, w, 0.0)
        order = np.argsort(-score, kind="stable")
        score, pos_w, w = score[order], pos_w[order], w[order]
        if score.size == 0:
            return np.zeros(0), np.zeros(0)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(score)) + 1])
        pos = np.add.reduceat(pos_w, starts)
        return pos, np.add.reduceat(w, starts) - pos


@dataclasses.dataclass(frozen=True)
class BinaryAUC(_RankingCurve):
    """Area under the ROC curve for binary labels (positive iff ``label > 0.5``).

    Exact (``bins=None``): the state keeps the valid examples' scores, labels and weights
    (``update``: ``[B]`` arrays; ``merge``: concatenation, held as lists of chunks), and
    ``compute`` equals ``sklearn.metrics.roc_auc_score`` with sample weights (tied scores count
    1/2). Memory grows with the split.

    Binned (``bins=N``): the state is two ``[N]`` histograms (positive / negative weight per
    equal-width probability bin on ``[0, 1]``; logits go through a sigmoid first, out-of-range
    values clip to the edge bins) and ``compute`` treats each bin as one tied score. Only pairs
    of a positive and a negative in the same bin can differ from the exact value, each by at most
    1/2, so ``|binned - exact| <= 0.5 * sum_b pos_b * neg_b / (P * N)``, which
    :meth:`error_bound` returns for a state. It is at most ``0.5 * max_b neg_b / N``; for class
    score densities ``f+, f-`` on ``[0, 1]`` it is about ``0.5 * integral(f+ f-) / bins``, i.e.
    at most ``0.5 * d / bins`` when either density is bounded by ``d``.
    """

    def compute(self, state):
        return float("nan") if state is None else _roc_auc(*self.groups(state))

    def error_bound(self, state) -> float:
        """Guaranteed bound on |value - exact value| of a state (0 for exact mode)."""
        if state is None:
            return float("nan")
        return 0.0 if self.bins is None else _auc_error_bound(*self.groups(state))


@dataclasses.dataclass(frozen=True)
class AveragePrecision(_RankingCurve):
    """Average precision (area under the precision-recall curve) for binary labels.

    Exact (``bins=None``): same state as :class:`BinaryAUC`; ``compute`` equals
    ``sklearn.metrics.average_precision_score`` with sample weights,
    ``AP = sum_k (R_k - R_{k-1}) P_k`` over distinct scores in descending order.

    Binned (``bins=N``): per-bin positive/negative histograms, each bin one tied score. With
    ``T_b, F_b`` the positive/negative weight in the top ``b`` bins, the exact precision of every
    positive in bin ``b`` lies in ``[T_{b-1} / (T_{b-1} + F_b), T_b / (T_b + F_{b-1})]``, as does
    the binned precision, so ``|binned - exact| <= sum_b (pos_b / P) * width_b`` where ``width_b``
    is the largest distance from the binned precision to either end of that interval;
    :meth:`error_bound` returns it for a state. Each interval is at most
    ``(pos_b + neg_b) / (T_{b-1} + F_{b-1})`` wide (the bin's weight over the weight ranked above
    it), so the bound shrinks as bins get narrower relative to the score distribution.
    """

    def compute(self, state):
        return float("nan") if state is None else _average_precision(*self.groups(state))

    def error_bound(self, state) -> float:
        """Guaranteed bound on |value - exact value| of a state (0 for exact mode)."""
        if state is None:
            return float("nan")
        return 0.0 if self.bins is None else _ap_error_bound(*self.groups(state))


# ------------------------------------------------------------------------------ WER / CER
def levenshtein(hyp, hyp_len, ref, ref_len):
    """Edit distance per row between ``hyp [B, H]`` and ``ref [B, R]`` token ids (JAX).

    Only the first ``hyp_len [B]`` / ``ref_len [B]`` tokens count. One ``lax.scan`` step per
    reference token updates the whole DP row for all examples at once: with
    ``tmp[j] = min(prev[j] + 1, prev[j-1] + cost_j)`` (``tmp[0] = i``), the insertion chain
    ``new[j] = min(tmp[j], new[j-1] + 1)`` resolves to ``new[j] = j + cummin_k<=j(tmp[k] - k)``.
    Returns int32 ``[B]``.
    """
    hyp, ref = jnp.asarray(hyp, jnp.int32), jnp.asarray(ref, jnp.int32)
    B, H = hyp.shape
    R = ref.shape[1]
    hyp_len = jnp.clip(jnp.asarray(hyp_len, jnp.int32), 0, H)
    ref_len = jnp.clip(jnp.asarray(ref_len, jnp.int32), 0, R)
    j = jnp.arange(H + 1, dtype=jnp.int32)[None, :]
    row0 = jnp.broadcast_to(j, (B, H + 1))

    def step(carry, xs):
        prev, result = carry
        i, tok = xs
        cost = (hyp != tok[:, None]).astype(jnp.int32)
        tmp = jnp.minimum(prev[:, 1:] + 1, prev[:, :-1] + cost)
        tmp = jnp.concatenate([jnp.full((B, 1), i, jnp.int32), tmp], axis=1)
        new = j + jax.lax.cummin(tmp - j, axis=1)
        at_end = jnp.take_along_axis(new, hyp_len[:, None], axis=1)[:, 0]
        return (new, jnp.where(ref_len == i, at_end, result)), None

    steps = (jnp.arange(1, R + 1, dtype=jnp.int32), ref.T)
    (_, result), _ = jax.lax.scan(step, (row0, hyp_len), steps)
    return result


@dataclasses.dataclass(frozen=True)
class WordErrorRate(Metric):
    """Corpus word error rate: total edit distance / total reference length.

    ``hyp [B, H]`` and ``ref [B, R]`` are token (word) id arrays. Their lengths come from
    ``hyp_length`` / ``ref_length`` (keys of ``[B]`` int arrays) or ``hyp_mask`` / ``ref_mask``
    (keys of ``[B, T]`` prefix masks; the length is the mask's count); with neither, every column
    counts. The Levenshtein distance runs on device (:func:`levenshtein`). Weights scale both
    sums. State: ``(sum w * edits, sum w * reference length)``; undefined (nan) when the
    references hold no token.
    """

    hyp: str = "hyp"
    ref: str = "ref"
    hyp_length: Optional[str] = None
    ref_length: Optional[str] = None
    hyp_mask: Optional[str] = None
    ref_mask: Optional[str] = None

    def __post_init__(self):
        for side in ("hyp", "ref"):
            if getattr(self, f"{side}_length") is not None and \
                    getattr(self, f"{side}_mask") is not None:
                raise ValueError(f"{type(self).__name__}: give {side}_length or {side}_mask, "
                                 "not both")

    def _tokens_and_lengths(self, outputs, batch, side: str, valid):
        name = type(self).__name__
        tokens = jnp.asarray(self._get(outputs, batch, side))
        if tokens.ndim != 2:
            raise ValueError(f"{name}.{side}: expected token ids [B, T], got {tokens.shape}")
        if getattr(self, f"{side}_length") is not None:
            length = _as_vector(self._get(outputs, batch, f"{side}_length"), name,
                                f"{side}_length")
        elif getattr(self, f"{side}_mask") is not None:
            mask = jnp.asarray(self._get(outputs, batch, f"{side}_mask"))
            if mask.shape != tokens.shape:
                raise ValueError(f"{name}.{side}_mask: expected shape {tokens.shape}, "
                                 f"got {mask.shape}")
            length = jnp.sum(mask.astype(bool), axis=1)
        else:
            length = jnp.full((tokens.shape[0],), tokens.shape[1])
        tokens = jnp.where(valid[:, None], tokens, 0).astype(jnp.int32)
        return tokens, jnp.where(valid, length, 0).astype(jnp.int32)

    def update(self, outputs, batch, weights):
        ref0 = jnp.asarray(self._get(outputs, batch, "ref"))
        valid, w = _valid(weights, ref0.shape[0])
        hyp, hyp_len = self._tokens_and_lengths(outputs, batch, "hyp", valid)
        ref, ref_len = self._tokens_and_lengths(outputs, batch, "ref", valid)
        edits = jnp.where(valid, levenshtein(hyp, hyp_len, ref, ref_len), 0)
        return {"edits": _wsum(w, edits), "ref_length": _wsum(w, ref_len)}

    def compute(self, state):
        if state is None:
            return float("nan")
        return _ratio(state["edits"], state["ref_length"])


@dataclasses.dataclass(frozen=True)
class CharErrorRate(WordErrorRate):
    """Corpus character error rate: :class:`WordErrorRate` over character id arrays."""

    hyp: str = "hyp_chars"
    ref: str = "ref_chars"
