"""TensorFlow SavedModel export of a task's ``predict`` with its feature transform baked in.

The JAX function is lowered with ``jax2tf`` (one ``XlaCallModule`` op) under shape polymorphism:
every ``None`` in the task's export signature becomes a symbolic dimension, so one SavedModel
serves any batch size (and, for ranking, any list length). Parameters and fitted constants are
``tf.Variable``s. Models are written to versioned folders ``<base>/<version>/`` as TF Serving
expects, with facts about the model in ``assets.extra/mlsd_model.json``.
"""
from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("SavedModel export needs TensorFlow: pip install -e '.[export]' "
                          "(tensorflow-cpu)") from e
    return tf


def _polymorphic_specs(signature: Mapping[str, tuple]) -> dict[str, str]:
    """``{"features": (None, None, 136)}`` -> ``{"features": "(b0, b1, 136)"}``.

    Free dims are matched by position across inputs (dim 0 is the batch everywhere, dim 1 the
    list/sequence length), so inputs that share an axis share its symbol.
    """
    names = list(string.ascii_lowercase)
    specs = {}
    for key, (shape, _) in signature.items():
        dims = [names[i] if d is None else str(d) for i, d in enumerate(shape)]
        specs[key] = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    return specs


def next_version(base: str | Path) -> int:
    base = Path(base)
    versions = [int(p.name) for p in base.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(task, params, consts, base_dir: str | Path, *, version: int | None = None,
                       metadata: Mapping[str, Any] | None = None, check: bool = True) -> Path:
    """Writes ``base_dir/<version>`` and returns its path.

    With ``check``, reloads it in TensorFlow and compares against JAX on the task's example
    batch (raises if they differ by more than 1e-4).
    """
    tf = _tf()
    from jax.experimental import jax2tf

    base_dir = Path(base_dir).absolute()
    version = version or next_version(base_dir)
    out = base_dir / str(version)
    signature = dict(task.export_signature)
    variables = {"params": jax.device_get(params), "consts": jax.device_get(consts)}

    def predict(variables, inputs):
        return task.predict(variables["params"], variables["consts"], inputs)

    tf_predict = jax2tf.convert(predict, with_gradient=False,
                                polymorphic_shapes=[None, _polymorphic_specs(signature)])
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(
        lambda x: tf.Variable(np.asarray(x), trainable=False), variables)
    input_spec = {k: tf.TensorSpec(shape, tf.as_dtype(dtype), name=k)
                  for k, (shape, dtype) in signature.items()}

    @tf.function(input_signature=[input_spec], autograph=False)
    def serve(inputs):
        return {"scores": tf_predict(module.variables_tree, inputs)}

    module.serve = serve
    tf.saved_model.save(module, str(out), signatures={"serving_default": serve})
    extra = out / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    (extra / "mlsd_model.json").write_text(json.dumps({
        "task": task.name, "version": version,
        "inputs": {k: {"shape": list(s), "dtype": np.dtype(d).name} for k, (s, d) in signature.items()},
        "outputs": {"scores": "float32, shape of the inputs without the feature axis"},
        **(dict(metadata) if metadata else {})}, indent=2, default=str))
    if check:
        example = {k: np.asarray(v) for k, v in task.inputs(task.example_batch).items()}
        max_diff = compare_with_jax(out, task, variables, example)
        if max_diff > 1e-4:
            raise RuntimeError(f"exported SavedModel differs from JAX by {max_diff:g} at {out}")
    return out


def load_saved_model(path: str | Path):
    """Returns the ``serving_default`` signature of a SavedModel."""
    tf = _tf()
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def compare_with_jax(path, task, variables, inputs: Mapping[str, np.ndarray]) -> float:
    tf = _tf()
    serve = load_saved_model(path)
    got = serve(**{k: tf.constant(v) for k, v in inputs.items()})["scores"].numpy()
    want = np.asarray(task.predict(variables["params"], variables["consts"], inputs))
    return float(np.max(np.abs(got - want))) if got.size else 0.0
