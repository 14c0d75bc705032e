"""The self-contained model bundle: everything a server or a batch job needs, no training data.

A bundle lives in a SavedModel version folder, under ``assets.extra/`` (TF Serving ignores it):

* ``mlsd_model.json``, the model card: task, the ``serving`` function that rebuilds the model,
  the composed config, the fitted feature spec, signatures (inputs with named dimensions,
  outputs with their meaning), metrics, data facts and fingerprint, git commit, library
  versions.
* ``mlsd_variables.msgpack``: parameters, model state (e.g. BatchNorm statistics) and fitted
  constants.

:func:`load_bundle` rebuilds the task's model, forward and signatures from the card alone and
returns jitted JAX predict functions (the server's fast path) that agree with the SavedModel.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from flax import serialization

from mlsd_jax.tasks.base import Serving, Signature, cast_inputs, predict_fn

CARD = "mlsd_model.json"
VARIABLES = "mlsd_variables.msgpack"


def _spec_json(specs: Mapping[str, tuple]) -> dict:
    return {k: {"dims": [d if isinstance(d, int) else str(d) for d in dims],
                "dtype": "string" if np.dtype(dt).kind in "USO" else np.dtype(dt).name}
            for k, (dims, dt) in specs.items()}


def signature_json(sig: Signature) -> dict:
    return {"inputs": _spec_json(sig.inputs), "outputs": dict(sig.outputs),
            "model_inputs": _spec_json(sig.model_inputs)}


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "orbax.checkpoint", "tensorflow",
                 "mlsd_jax"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except ImportError:
            continue
    return out


def git_commit() -> str | None:
    """The commit of the source tree this package runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def fingerprint(*arrays: np.ndarray, max_bytes: int = 64 << 20) -> str:
    """sha256 over shapes, dtypes and contents (a strided sample for arrays over ``max_bytes``)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        flat = a.reshape(-1)
        if flat.nbytes > max_bytes:
            flat = flat[:: -(-flat.nbytes // max_bytes)]
        h.update(np.ascontiguousarray(flat).tobytes())
    return "sha256:" + h.hexdigest()


def write_bundle(directory: Path, task, variables, consts, *, config: Mapping[str, Any],
                 card: Mapping[str, Any]) -> None:
    """Writes the card and the variables into ``directory`` (an ``assets.extra`` folder)."""
    directory.mkdir(parents=True, exist_ok=True)
    full = {"format": 1, "task": task.name, "serving": task.serving, "features": task.features,
            "signatures": {k: signature_json(s) for k, s in task.signatures.items()},
            "config": config, "git_commit": git_commit(), "libraries": library_versions(),
            **card}
    (directory / CARD).write_text(json.dumps(full, indent=2, default=_json_default))
    blob = serialization.msgpack_serialize(
        {"variables": _numpy(variables), "consts": _numpy(consts)})
    (directory / VARIABLES).write_bytes(blob)


def _numpy(tree):
    return jax.tree.map(lambda x: np.asarray(x), jax.device_get(tree))


def _json_default(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def rebuild_serving(card: Mapping[str, Any]) -> Serving:
    """Calls the task's ``serving(cfg, features)`` named in the card."""
    module, _, fn = card["serving"].partition(":")
    return getattr(importlib.import_module(module), fn)(card["config"], card["features"])


class Bundle:
    """A loaded bundle: ``predict(raw_inputs)`` on the host, jitted JAX inside."""

    def __init__(self, path: Path, card: Mapping[str, Any], serving: Serving, variables, consts):
        self.path, self.card, self.serving = path, dict(card), serving
        self.variables, self.consts = variables, consts
        self._jitted: dict[str, Any] = {}

    @property
    def signatures(self) -> Mapping[str, Signature]:
        return self.serving.signatures

    def jax_predict(self, signature: str = "serving_default"):
        """Jitted ``fn(variables, consts, encoded_inputs) -> outputs`` for one signature."""
        if signature not in self._jitted:
            sig = self._signature(signature)
            self._jitted[signature] = jax.jit(predict_fn(self.serving.model, sig))
        return self._jitted[signature]

    def encode(self, inputs: Mapping[str, Any], signature: str = "serving_default") -> dict:
        """Raw client inputs -> the numeric inputs the JAX model takes (host side)."""
        sig = self._signature(signature)
        raw = cast_inputs(sig.inputs, inputs)
        encoded = sig.encode_np(raw) if sig.encode_np is not None else raw
        return cast_inputs(sig.model_inputs, encoded)

    def predict(self, inputs: Mapping[str, Any], signature: str = "serving_default"
                ) -> dict[str, np.ndarray]:
        encoded = self.encode(inputs, signature)
        out = self.jax_predict(signature)(self.variables, self.consts, encoded)
        return self._signature(signature).lookup_np({k: np.asarray(v) for k, v in out.items()})

    def _signature(self, name: str) -> Signature:
        if name not in self.signatures:
            raise KeyError(f"signature {name!r} not in this model; it has {sorted(self.signatures)}")
        return self.signatures[name]


def load_bundle(path: str | Path) -> Bundle:
    """Loads a bundle from a SavedModel version folder (or its ``assets.extra``)."""
    path = Path(path)
    extra = path if (path / CARD).exists() else path / "assets.extra"
    if not (extra / CARD).exists():
        raise FileNotFoundError(f"{path}: no model bundle ({CARD} not found in it or in "
                                f"its assets.extra/)")
    card = json.loads((extra / CARD).read_text())
    state = serialization.msgpack_restore((extra / VARIABLES).read_bytes())
    return Bundle(path, card, rebuild_serving(card), state["variables"], state["consts"])
