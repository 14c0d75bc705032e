"""TensorFlow SavedModel export of a task's signatures, feature path included, plus its bundle.

Each signature of the task becomes one SavedModel signature (``serving_default`` first). Its
TensorFlow function takes raw client values (strings, ids, numbers), runs the fitted feature
encoder in TensorFlow ops, then the JAX model lowered with ``jax2tf`` (one ``XlaCallModule``
op) under shape polymorphism: named dimensions (``batch``, ``list``, ``history``) are symbolic
and shared by name across inputs, so one SavedModel serves any batch size and list length.
Parameters, model state and fitted constants are ``tf.Variable``s.

Models are written to versioned folders ``<base>/<version>/`` as TF Serving expects, with the
bundle (:mod:`mlsd_jax.export.bundle`) in ``assets.extra/``. A version is written to a
temporary folder, reloaded and checked against the bundle's JAX predict, and only then renamed
into place: a failed or killed export leaves no half-written version behind.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from mlsd_jax.export.bundle import Bundle, load_bundle, write_bundle
from mlsd_jax.tasks.base import Signature, predict_fn


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("SavedModel export needs TensorFlow: pip install -e '.[export]' "
                          "(tensorflow-cpu)") from e
    return tf


def polymorphic_spec(dims) -> str:
    """``("batch", "list", 136)`` -> ``"(batch, list, 136)"`` for jax2tf."""
    parts = [str(d) for d in dims]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _tf_spec(tf, name: str, dims, dtype):
    tf_dtype = tf.string if np.dtype(dtype).kind in "USO" else tf.as_dtype(np.dtype(dtype))
    return tf.TensorSpec([d if isinstance(d, int) else None for d in dims], tf_dtype, name=name)


def next_version(base: str | Path) -> int:
    base = Path(base)
    versions = [int(p.name) for p in base.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _serving_function(tf, module, model, sig: Signature):
    """The TF function of one signature: raw inputs -> encoder -> jax2tf(model) -> outputs."""
    from jax.experimental import jax2tf

    poly = {k: polymorphic_spec(dims) for k, (dims, _) in sig.model_inputs.items()}
    lowered = jax2tf.convert(predict_fn(model, sig), with_gradient=False,
                             polymorphic_shapes=[None, None, poly])
    input_spec = {k: _tf_spec(tf, k, dims, dt) for k, (dims, dt) in sig.inputs.items()}

    @tf.function(input_signature=[input_spec], autograph=False)
    def serve(inputs):
        with tf.control_dependencies(_input_checks(tf, inputs, sig.inputs)):
            inputs = {k: tf.identity(v) for k, v in inputs.items()}
        encoded = sig.encode_tf(inputs) if sig.encode_tf is not None else inputs
        encoded = {k: tf.cast(encoded[k], tf.as_dtype(np.dtype(dt)))
                   for k, (_, dt) in sig.model_inputs.items()}
        return sig.lookup_tf(lowered(module.variables_tree, module.consts_tree, encoded))

    return serve


def _input_checks(tf, inputs, specs) -> list:
    """Named dims must be non-empty and agree across inputs; errors name inputs and dims
    (without quotes: TensorFlow escapes them in its error text)."""
    checks, first = [], {}
    for name, (dims, _) in specs.items():
        shape = tf.shape(inputs[name])
        for i, dim in enumerate(dims):
            if isinstance(dim, int):
                continue
            checks.append(tf.debugging.assert_positive(
                shape[i], message=f"input {name}: dimension {i} ({dim}) is empty; expected "
                                  f"at least 1"))
            if dim in first:
                other, j = first[dim]
                checks.append(tf.debugging.assert_equal(
                    shape[i], tf.shape(inputs[other])[j],
                    message=f"input {name} dimension {i} ({dim}) must equal input {other} "
                            f"dimension {j} ({dim})"))
            else:
                first[dim] = (name, i)
    return checks


def export_model(task, state, base_dir: str | Path, *, version: int | None = None,
                 config: Mapping[str, Any] | None = None, card: Mapping[str, Any] | None = None,
                 check: bool = True, tolerance: float = 1e-4) -> Path:
    """Writes ``base_dir/<version>`` (SavedModel + bundle) and returns its path.

    ``state`` is anything with ``variables`` (params and model state) and ``consts``;
    ``config`` defaults to the task's own composed config (what rebuilds the model). With
    ``check``, the written version is reloaded twice (SavedModel in TensorFlow, bundle in JAX)
    and every signature must agree on the task's serving examples within ``tolerance``.
    """
    tf = _tf()
    base_dir = Path(base_dir).absolute()
    base_dir.mkdir(parents=True, exist_ok=True)
    version = version or next_version(base_dir)
    final = base_dir / str(version)
    if final.exists():
        raise FileExistsError(f"{final} exists; pick another version or remove it")
    tmp = base_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    from flax.linen import meta

    variables = jax.tree.map(np.asarray, jax.device_get(meta.unbox(state.variables)))
    consts = jax.tree.map(np.asarray, jax.device_get(state.consts))
    try:
        module = tf.Module()
        module.variables_tree = tf.nest.map_structure(
            lambda x: tf.Variable(x, trainable=False), variables)
        module.consts_tree = tf.nest.map_structure(
            lambda x: tf.Variable(x, trainable=False), consts)
        for name, sig in task.signatures.items():
            if sig.tf_module is not None:  # vocabulary tables and other resources
                setattr(module, f"resources_{name}", sig.tf_module())
        fns = {name: _serving_function(tf, module, task.model, sig)
               for name, sig in task.signatures.items()}
        for name, fn in fns.items():
            setattr(module, f"sig_{name}", fn)
        tf.saved_model.save(module, str(tmp), signatures=fns)
        write_bundle(tmp / "assets.extra", task, variables, consts,
                     config=config if config is not None else task.config,
                     card={"version": version, **(dict(card) if card else {})})
        if check:
            check_export(tmp, task.serving_examples, tolerance)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def check_export(path: Path, examples: Mapping[str, Mapping[str, np.ndarray]],
                 tolerance: float) -> dict[str, float]:
    """SavedModel (TensorFlow) vs bundle (JAX) on raw examples; raises when they differ."""
    bundle = load_bundle(path)
    loaded = _tf().saved_model.load(str(path))  # once, for every signature
    diffs = {}
    for name, raw in examples.items():
        got = _run_signature(loaded.signatures[name], raw)
        want = bundle.predict(raw, name)
        diffs[name] = max((_max_diff(got[k], want[k]) for k in want), default=0.0)
        if not diffs[name] <= tolerance:
            raise RuntimeError(f"exported signature {name!r} at {path}: SavedModel and JAX differ "
                               f"by {diffs[name]:g} (tolerance {tolerance:g})")
    return diffs


def _max_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    if a.dtype.kind in "USO" or b.dtype.kind in "USO":  # names (TensorFlow gives bytes)
        def text(x):
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in x.reshape(-1)]
        return float(text(a) != text(b))
    if a.dtype.kind in "iub":
        return float(np.max(a != b))
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def load_saved_model(path: str | Path, signature: str = "serving_default"):
    """Returns one signature of a SavedModel (call it with keyword tensors)."""
    tf = _tf()
    loaded = tf.saved_model.load(str(path))
    if signature not in loaded.signatures:
        raise KeyError(f"{path}: no signature {signature!r}; has {sorted(loaded.signatures)}")
    fn = loaded.signatures[signature]
    fn._loaded = loaded  # keep the variables alive with the function
    return fn


def saved_model_predict(path: str | Path, inputs: Mapping[str, Any],
                        signature: str = "serving_default") -> dict[str, np.ndarray]:
    """Runs a SavedModel signature on numpy/list inputs; returns numpy outputs."""
    return _run_signature(load_saved_model(path, signature), inputs)


def _run_signature(fn, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    tf = _tf()
    specs = fn.structured_input_signature[1]
    feed = {}
    for k, spec in specs.items():
        if k not in inputs:
            raise KeyError(f"missing input {k!r}; the signature takes {sorted(specs)}")
        value = np.asarray(inputs[k])
        if spec.dtype == tf.string:
            value = value.astype(object)
        feed[k] = tf.constant(value, dtype=spec.dtype)
    return {k: v.numpy() for k, v in fn(**feed).items()}


__all__ = ["Bundle", "check_export", "export_model", "load_bundle", "load_saved_model",
           "next_version", "polymorphic_spec", "saved_model_predict"]
