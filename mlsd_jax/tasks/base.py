"""The ``Task``: everything one problem needs, composed from plain parts, and the core contract.

One trainer, one evaluator and one exporter are written against this dataclass; a new problem
is a new builder function that fills it in, not a new class hierarchy.

The contract a task provides (see the README's "The task contract"):

* ``forward(apply, consts, inputs, *, train) -> dict`` of named outputs. ``apply(*args, **kw)``
  is the model call, bound by the core to ``model.init`` (initialisation), ``model.apply``
  (training, with mutable model state such as BatchNorm ``batch_stats``) or ``model.apply``
  (inference); ``consts`` are the fitted feature constants. Initialisation, training,
  evaluation, the bundle and the SavedModel all run this one function, so they see the same
  transformed inputs.
* ``loss_fn(outputs, batch) -> (loss, aux)``: a scalar and a dict of scalars logged as
  ``train/<name>``.
* ``metrics``: mergeable accumulators (:mod:`mlsd_jax.metrics.streaming`) computed over whole
  splits, or an ``evaluator`` of the task's own.
* ``serving``: the import path of ``fn(cfg, features) -> Serving`` that rebuilds the model,
  forward and export signatures without the training data (used by the builder and by
  :func:`mlsd_jax.export.load_bundle`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np

Batch = Mapping[str, np.ndarray]
# (dims, dtype): dims name symbolic axes ("batch", "list") or give fixed sizes (136).
InputSpec = tuple[tuple[Any, ...], Any]


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def serving_name(column: str) -> str:
    """A column name as a signature input: ``marital-status`` -> ``marital_status``."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", column)
    return name if _IDENTIFIER.fullmatch(name) else "_" + name


@dataclasses.dataclass(frozen=True)
class Signature:
    """One exported serving function.

    Attributes:
      inputs: raw client inputs, ``name -> (dims, dtype)``; string dims are symbolic and shared
        by name across inputs (``("batch", "history")``), ints are fixed sizes. ``np.str_``
        means a string tensor.
      outputs: ``name -> meaning`` of the returned tensors, in order.
      predict: ``predict(apply, consts, encoded) -> dict`` (JAX): the model part.
      encoded: specs of the encoded (numeric) inputs that ``predict`` takes; ``None``: the same
        as ``inputs`` (no string work).
      encode_np / encode_tf: raw -> encoded inputs on the host (numpy) and inside the SavedModel
        (TensorFlow); ``None`` when ``encoded`` is ``None``.
      tf_module: ``() -> tf.Module`` owning the TensorFlow resources ``encode_tf`` uses
        (vocabulary tables); the exporter attaches it so the SavedModel tracks them.
      lookups: string outputs named after integer ones, ``output -> (int output, names)``:
        ``output = names[int output]`` elementwise (class names of predicted class ids). They
        are computed after the model (numpy on the host, ``tf.gather`` in the SavedModel), so
        ``predict`` returns only the numeric outputs; list them in ``outputs`` too.
    """

    inputs: Mapping[str, InputSpec]
    outputs: Mapping[str, str]
    predict: Callable[..., Mapping[str, Any]]
    encoded: Mapping[str, InputSpec] | None = None
    encode_np: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None
    encode_tf: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    tf_module: Callable[[], Any] | None = None
    lookups: Mapping[str, tuple[str, tuple[str, ...]]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        bad = [k for k in self.inputs if not _IDENTIFIER.fullmatch(k)]
        if bad:
            raise ValueError(f"signature input names {bad} are not identifiers (letters, digits, "
                             f"'_'); TensorFlow would rename them. Use serving_name() for columns.")
        for name, (source, names) in self.lookups.items():
            if name not in self.outputs or source not in self.outputs or source in self.lookups:
                raise ValueError(f"signature lookup {name!r} <- {source!r}: both must be listed "
                                 f"in outputs {list(self.outputs)} and {source!r} must be a "
                                 f"model output, not another lookup")
            if not names or not all(isinstance(n, str) for n in names):
                raise ValueError(f"signature lookup {name!r}: names must be a non-empty sequence "
                                 f"of strings")

    @property
    def model_outputs(self) -> tuple[str, ...]:
        """The outputs ``predict`` computes (all but the lookups)."""
        return tuple(k for k in self.outputs if k not in self.lookups)

    def lookup_np(self, outputs: Mapping[str, Any]) -> dict:
        """Model outputs -> every output of the signature, in order (lookups added, numpy)."""
        out = dict(outputs)
        for name, (source, names) in self.lookups.items():
            out[name] = np.asarray(names, dtype=str)[np.asarray(outputs[source], np.int64)]
        return {k: out[k] for k in self.outputs}

    def lookup_tf(self, outputs: Mapping[str, Any]) -> dict:
        """The same as :meth:`lookup_np` in TensorFlow ops (inside the SavedModel)."""
        if not self.lookups:
            return dict(outputs)
        import tensorflow as tf

        out = dict(outputs)
        for name, (source, names) in self.lookups.items():
            out[name] = tf.gather(tf.constant(list(names), tf.string),
                                  tf.cast(outputs[source], tf.int32))
        return {k: out[k] for k in self.outputs}

    @property
    def model_inputs(self) -> Mapping[str, InputSpec]:
        return self.encoded if self.encoded is not None else self.inputs


@dataclasses.dataclass(frozen=True)
class Serving:
    """What serving needs, rebuilt from config and fitted features alone."""

    model: nn.Module
    forward: Callable[..., Mapping[str, Any]]
    signatures: Mapping[str, Signature]


@dataclasses.dataclass(frozen=True)
class Task:
    """A problem, assembled.

    Attributes:
      name: task name (``ranking``, ``tabular``...).
      model, forward, signatures: as in :class:`Serving` (``signatures["serving_default"]``
        is the default export).
      consts: fitted, non-trained constants (feature transforms) as a pytree of arrays; saved in
        checkpoints and baked into exports.
      loss_fn: ``loss_fn(outputs, batch) -> (scalar, {name: scalar})``.
      metrics: ``name -> Metric`` (``update(outputs, batch, weights)`` on device, ``merge`` and
        ``compute`` on the host).
      example_weight: ``fn(batch) -> [B]``: how much each example counts in metrics (padding
        rows give 0).
      train_batches: ``(seed, start_step) -> iterator`` of global-batch dicts (process-local
        slices in multi-process runs).
      eval_splits: ``split -> () -> iterator`` of batches covering the whole split.
      example_batch: one training batch (shapes and dtypes for shardings and initialisation).
      input_keys: batch keys that are model inputs (the rest are labels, masks, weights).
      serving: ``"module:function"`` of ``fn(cfg, features) -> Serving``.
      features: the fitted feature spec (``to_json()``) or ``None``; goes into the bundle.
      serving_examples: ``signature -> raw inputs`` used to check exports.
      target_metric / target_mode: the validation metric for early stopping and best checkpoint.
      evaluator: optional ``fn(trainer, state, split) -> {name: float}`` replacing the default
        metric loop (e.g. retrieval that encodes a catalogue once per evaluation).
      post_fit: optional ``fn(trainer, state) -> (state, info)`` run once on the best state
        after training and before export: it reads the *validation* split only and may return
        the state with new ``consts`` values (same structure; e.g. decision thresholds, which
        the export then carries); ``info`` goes into results.json and the model card.
      config: the composed config as plain data (set by :func:`mlsd_jax.tasks.build`); the
        bundle stores it so ``serving`` can rebuild the model.
      info: dataset sizes, credits, split rule and other facts for results.json.
      reference_inputs: optional ``() -> {name: array}``: the validation split's raw serving
        inputs, keyed as a client sends them to ``serving_default``, plus optionally the labels
        under the key ``"label"`` (a name that is not a signature input). After the export,
        :func:`mlsd_jax.experiment.run` scores them with the exported bundle and saves a
        reference :class:`~mlsd_jax.monitoring.profile.Profile` of inputs, outputs and labels
        as ``profile.json`` beside the model card (what ``experiments.monitor`` compares the
        prediction log with). ``None``: no profile is saved.
    """

    name: str
    model: nn.Module
    consts: Any
    forward: Callable[..., Mapping[str, Any]]
    loss_fn: Callable[[Mapping[str, Any], Batch], Any]
    metrics: Mapping[str, Any]
    example_weight: Callable[[Batch], Any]
    train_batches: Callable[[int, int], Iterator[Batch]]
    eval_splits: Mapping[str, Callable[[], Iterator[Batch]]]
    example_batch: Batch
    input_keys: tuple[str, ...]
    signatures: Mapping[str, Signature]
    serving: str
    target_metric: str
    target_mode: str = "max"
    features: Any = None
    serving_examples: Mapping[str, Mapping[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    evaluator: Callable[..., Mapping[str, float]] | None = None
    post_fit: Callable[..., tuple[Any, Mapping[str, Any]]] | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reference_inputs: Callable[[], Mapping[str, np.ndarray]] | None = None

    def __post_init__(self):
        if "serving_default" not in self.signatures:
            raise ValueError(f"task {self.name!r}: signatures must include 'serving_default' "
                             f"(got {sorted(self.signatures)})")
        if self.target_mode not in ("max", "min"):
            raise ValueError(f"task {self.name!r}: target_mode must be 'max' or 'min', "
                             f"got {self.target_mode!r}")

    def inputs(self, batch: Batch) -> dict:
        return {k: batch[k] for k in self.input_keys}


# ------------------------------------------------------------------------------ the core binding
def _merge_collections(into: dict, new: Mapping) -> None:
    for col, tree in new.items():
        into[col] = _deep_merge(into.get(col, {}), tree)


def _deep_merge(a, b):
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = dict(a)
        for k, v in b.items():
            out[k] = _deep_merge(out[k], v) if k in out else v
        return out
    return b


def init_variables(model: nn.Module, forward, consts, inputs, rng) -> dict:
    """Initialises ``model`` by running ``forward`` once with ``apply`` bound to ``init``.

    Returns every variable collection (``params`` and model state such as ``batch_stats``).
    A forward that calls several model methods gets the union of their variables.
    """
    variables: dict = {}

    def apply(*args, method=None, **kwargs):
        out, v = model.init_with_output({"params": rng, "dropout": rng}, *args, method=method,
                                        **kwargs)
        _merge_collections(variables, v)
        return out

    forward(apply, consts, inputs, train=False)
    return variables


def training_rngs(rng) -> dict:
    """The random streams a training ``apply`` gets: ``dropout`` and ``augment`` (on-device data
    augmentation inside the model, :mod:`mlsd_jax.features.augment`), independent of each other."""
    return {"dropout": rng, "augment": jax.random.fold_in(rng, 0x5EED)}


def run_forward(model: nn.Module, forward, variables: Mapping, consts, inputs, *, train: bool,
                rng=None) -> tuple[dict, dict]:
    """``forward`` with ``apply`` bound to ``model.apply``: returns ``(outputs, model_state)``.

    In training, every non-``params`` collection is mutable and its updated value is returned;
    in inference the model state is read only and returned unchanged.
    """
    state_cols = [c for c in variables if c != "params"]
    updated: dict = {}
    rngs = training_rngs(rng) if (train and rng is not None) else None

    def apply(*args, method=None, **kwargs):
        if train and state_cols:
            out, upd = model.apply(variables, *args, method=method, rngs=rngs,
                                   mutable=state_cols, **kwargs)
            _merge_collections(updated, upd)
            return out
        return model.apply(variables, *args, method=method, rngs=rngs, **kwargs)

    outputs = forward(apply, consts, inputs, train=train)
    if not isinstance(outputs, Mapping):
        raise TypeError(f"forward must return a dict of named outputs, got {type(outputs).__name__}")
    model_state = {c: updated.get(c, variables[c]) for c in state_cols}
    return dict(outputs), model_state


def split_scorer(model: nn.Module, forward, input_keys, eval_splits, *, output: str = "prob",
                 keys=("label",), task: str = "this"):
    """``scores(trainer, state, split) -> (outputs, {key: values})``: the jitted forward's
    ``output`` over a whole evaluation split, gathered on the host with the padding rows (weight
    0) dropped, beside the batches' ``keys`` (labels, flags). For evaluators that need every
    score at once (thresholds chosen on validation); one process only.
    """
    @jax.jit
    def output_fn(variables, consts, inputs):
        out, _ = run_forward(model, forward, variables, consts, inputs, train=False)
        return out[output]

    def scores(trainer, state, split):
        if jax.process_count() > 1:
            raise NotImplementedError(f"the {task} task's evaluator runs in one process")
        outs, cols = [], {k: [] for k in keys}
        for batch in eval_splits[split]():
            inputs = trainer.put_batch({k: batch[k] for k in input_keys})
            keep = batch["weight"] > 0
            outs.append(np.asarray(jax.device_get(output_fn(state.variables, state.consts,
                                                            inputs)))[keep])
            for k in keys:
                cols[k].append(np.asarray(batch[k])[keep])
        return np.concatenate(outs), {k: np.concatenate(v) for k, v in cols.items()}

    return scores


def run_forward_collecting(model: nn.Module, forward, variables: Mapping, consts, inputs, *,
                           collect: str, inject: str, injected=None, rng=None):
    """Training ``forward`` that also returns collection ``collect`` of every ``apply`` call.

    Returns ``(outputs, model_state, collected, created)``: ``collected[i]`` is what call ``i``
    wrote into ``collect``. ``injected[i]`` is passed to call ``i`` as collection ``inject``;
    with ``injected=None`` that collection is mutable instead and ``created[i]`` holds what
    call ``i`` created in it (run this under :func:`jax.eval_shape` to learn the shapes). Used
    by sparse embedding training (``mlsd_jax.training.sparse``).
    """
    state_cols = [c for c in variables if c != "params"]
    updated: dict = {}
    collected: list = []
    created: list = []
    rngs = training_rngs(rng) if rng is not None else None

    def apply(*args, method=None, **kwargs):
        i = len(collected)
        extra = [collect] + ([inject] if injected is None else [])
        v = dict(variables) if injected is None else {**variables, inject: injected[i]}
        out, upd = model.apply(v, *args, method=method, rngs=rngs,
                               mutable=state_cols + extra, **kwargs)
        upd = dict(upd)
        collected.append(upd.pop(collect, {}))
        created.append(upd.pop(inject, {}))
        _merge_collections(updated, upd)
        return out

    outputs = forward(apply, consts, inputs, train=True)
    if not isinstance(outputs, Mapping):
        raise TypeError(f"forward must return a dict of named outputs, got {type(outputs).__name__}")
    model_state = {c: updated.get(c, variables[c]) for c in state_cols}
    return dict(outputs), model_state, collected, created


def split_loss(value) -> tuple[Any, dict]:
    """Normalises ``loss_fn``'s result to ``(loss, aux)`` (a bare scalar gets empty aux)."""
    if isinstance(value, tuple):
        if len(value) != 2 or not isinstance(value[1], Mapping):
            raise TypeError("loss_fn must return a scalar or (scalar, {name: scalar})")
        return value[0], dict(value[1])
    return value, {}


def predict_fn(model: nn.Module, signature: Signature):
    """``fn(variables, consts, encoded) -> outputs`` for one signature (pure; jit it)."""
    def predict(variables, consts, encoded):
        def apply(*args, method=None, **kwargs):
            return model.apply(variables, *args, method=method, **kwargs)

        out = signature.predict(apply, consts, encoded)
        return {k: out[k] for k in signature.model_outputs}

    return predict


def cast_inputs(specs: Mapping[str, InputSpec], inputs: Mapping[str, Any]) -> dict:
    """Checks names and ranks of encoded inputs against their specs and casts dtypes."""
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise KeyError(f"missing inputs {missing}; expected {sorted(specs)}")
    out, sizes = {}, {}
    for k, (dims, dtype) in specs.items():
        x = np.asarray(inputs[k])
        if x.ndim != len(dims):
            raise ValueError(f"input {k!r} has shape {x.shape}; expected {len(dims)} dims {dims}")
        for i, d in enumerate(dims):
            if isinstance(d, int):
                if x.shape[i] != d:
                    raise ValueError(f"input {k!r} has shape {x.shape}; dim {i} must be {d} "
                                     f"({dims})")
                continue
            if x.shape[i] == 0:
                raise ValueError(f"input {k!r}: dimension {i} ({d}) is empty; expected at least 1")
            other = sizes.setdefault(d, (k, x.shape[i]))
            if other[1] != x.shape[i]:
                raise ValueError(f"input {k!r} dimension {i} ({d}) is {x.shape[i]} but input "
                                 f"{other[0]!r} has {d}={other[1]}; they must agree")
        if np.dtype(dtype).kind in "USO":
            out[k] = x
        else:
            if np.dtype(dtype).kind in "iub" and x.dtype.kind == "f":
                raise ValueError(f"input {k!r} has dtype {x.dtype}; expected {np.dtype(dtype).name}")
            out[k] = x.astype(dtype, copy=False)
    return out
