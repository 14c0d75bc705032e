"""Execution: one signature of one loaded model version, checked inputs in, named outputs out.

:class:`SignatureInfo` describes a signature as clients see it (raw inputs and outputs with
named dims and dtypes; output dims are found by tracing the model with ``jax.eval_shape``) and
validates request tensors against it: every error names the input and what was expected.

Two executors run a list of validated requests as one batch:

* :class:`JaxExecutor` (the fast path): the bundle's feature encoder on the host, then the
  jitted JAX predict, compiled ahead of time for every batch bucket (and bucket of each padded
  dim, e.g. the ranking ``list``), so a request never waits on a compile. Padded rows and
  masked padding items are cut from the outputs.
* :class:`SavedModelExecutor`: the SavedModel signature in TensorFlow on the raw inputs (the
  same numbers; selectable with ``execution=savedmodel``).
"""
from __future__ import annotations

import bisect
import dataclasses
import itertools
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from mlsd_jax.serving.errors import ServingError, invalid

BATCH = "batch"
STRING = "string"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A named tensor: ``dims`` are symbolic names (shared across tensors) or fixed sizes;
    ``dtype`` is a numpy dtype name or ``"string"``."""

    name: str
    dims: tuple
    dtype: str

    @property
    def is_string(self) -> bool:
        return self.dtype == STRING

    def shape_for(self, sizes: Mapping[str, int]) -> tuple[int, ...] | None:
        """The concrete shape given sizes of the symbolic dims (``None`` if one is unknown)."""
        out = []
        for d in self.dims:
            if isinstance(d, int):
                out.append(d)
            elif d in sizes:
                out.append(sizes[d])
            else:
                return None
        return tuple(out)

    def json_shape(self) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in self.dims]


def _dtype_name(dtype) -> str:
    dt = np.dtype(dtype)
    return STRING if dt.kind in "USO" else dt.name


def specs_of(inputs: Mapping[str, tuple]) -> dict[str, TensorSpec]:
    return {k: TensorSpec(k, tuple(dims), _dtype_name(dt)) for k, (dims, dt) in inputs.items()}


def output_specs(bundle, signature: str) -> dict[str, TensorSpec]:
    """Output names, dtypes and named dims, found by tracing the model at two sizes per dim."""
    import jax

    sig = bundle.signatures[signature]
    fn = bundle.jax_predict(signature)
    model_inputs = specs_of(sig.model_inputs)
    names = sorted({d for s in model_inputs.values() for d in s.dims if isinstance(d, str)})
    base = {d: 3 + 2 * i for i, d in enumerate(names)}

    def shapes(sizes):
        dummy = {k: jax.ShapeDtypeStruct(s.shape_for(sizes), np.dtype(s.dtype))
                 for k, s in model_inputs.items()}
        out = jax.eval_shape(fn, bundle.variables, bundle.consts, dummy)
        return {k: (tuple(v.shape), v.dtype) for k, v in out.items()}

    ref = shapes(base)
    dims = {k: [int(n) for n in shape] for k, (shape, _) in ref.items()}
    for d in names:
        moved = shapes({**base, d: base[d] + 17})
        for k, (shape, _) in moved.items():
            for i, (a, b) in enumerate(zip(ref[k][0], shape)):
                if a != b:
                    dims[k][i] = d
    for name, (source, _) in sig.lookups.items():  # names of ids: same dims, strings
        dims[name], ref[name] = dims[source], (None, np.str_)
    return {k: TensorSpec(k, tuple(dims[k]), _dtype_name(ref[k][1])) for k in sig.outputs}


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """A signature as the server exposes it, and the checks every request goes through."""

    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    meanings: Mapping[str, str]
    nan_inputs: frozenset       # float inputs where NaN means missing (read by a feature spec)
    max_rows: int
    dim_limits: Mapping[str, int]  # largest size of a padded dim (its largest bucket)

    @property
    def batched(self) -> bool:
        """Every input has the batch on axis 0, so requests can be concatenated."""
        return all(s.dims[:1] == (BATCH,) for s in self.inputs.values())

    def validate(self, arrays: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Checks names, dtypes, ranks, sizes and values; returns the cast arrays and the size
        of every symbolic dim."""
        unknown = sorted(set(arrays) - set(self.inputs))
        if unknown:
            raise invalid(f"unknown input {unknown[0]!r} for signature {self.name!r}; it takes "
                          f"{sorted(self.inputs)}")
        missing = sorted(set(self.inputs) - set(arrays))
        if missing:
            raise invalid(f"missing input {missing[0]!r} for signature {self.name!r}; it takes "
                          f"{sorted(self.inputs)}")
        out, sizes, first = {}, {}, {}
        for name, spec in self.inputs.items():
            x = cast(spec, arrays[name], allow_nan=name in self.nan_inputs)
            if x.ndim != len(spec.dims):
                raise invalid(f"input {name!r} has shape {list(x.shape)}; expected "
                              f"{len(spec.dims)} dims {_dims_text(spec.dims)}")
            for i, d in enumerate(spec.dims):
                n = x.shape[i]
                if isinstance(d, int):
                    if n != d:
                        raise invalid(f"input {name!r} has shape {list(x.shape)}; dim {i} must be "
                                      f"{d} {_dims_text(spec.dims)}")
                    continue
                if n == 0:
                    raise invalid(f"input {name!r}: dim {i} ({d}) is empty; expected at least 1")
                if d in sizes and sizes[d] != n:
                    raise invalid(f"input {name!r} dim {i} ({d}) is {n} but input {first[d]!r} "
                                  f"has {d}={sizes[d]}; they must agree")
                sizes.setdefault(d, n)
                first.setdefault(d, name)
            out[name] = x
        rows = sizes.get(BATCH, 1)
        if rows > self.max_rows:
            raise ServingError("INVALID_ARGUMENT", f"request has {rows} rows ({BATCH} dim); at "
                                                   f"most max_rows={self.max_rows} per request")
        for d, limit in self.dim_limits.items():
            if sizes.get(d, 0) > limit:
                raise invalid(f"input {first[d]!r}: dim {d} is {sizes[d]}; at most {limit} "
                              f"(the largest batching.dim_buckets.{d} bucket)")
        return out, sizes


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def cast(spec: TensorSpec, value: Any, *, allow_nan: bool) -> np.ndarray:
    """One request tensor as its signature dtype, or an error naming the input."""
    name = spec.name
    if spec.is_string:
        if isinstance(value, list) and all(type(v) is str for v in value):
            arr = np.empty(len(value), dtype=object)   # the common case: a column of text
            arr[:] = value
            return arr
        arr = value if isinstance(value, np.ndarray) else _object_array(value, name)
        if arr.dtype.kind == "S":
            arr = arr.astype(object)
        elif arr.dtype.kind == "U":
            arr = arr.astype(object)
        if arr.dtype != object:
            raise invalid(f"input {name!r} must hold strings (or {{\"b64\": ...}} bytes); got "
                          f"{_kind_text(arr)}")
        # One text type for every API (gRPC and b64 give bytes, JSON gives str): bytes are
        # decoded as the feature encoders read them (UTF-8, undecodable bytes kept by
        # surrogateescape, so TensorFlow sees the same bytes again).
        out = np.empty(arr.shape, dtype=object)
        flat, dst = arr.reshape(-1), out.reshape(-1)
        for i, v in enumerate(flat):
            if isinstance(v, bytes):
                dst[i] = v.decode("utf-8", "surrogateescape")
            elif isinstance(v, str):
                dst[i] = v
            else:
                raise invalid(f"input {name!r} must hold strings (or {{\"b64\": ...}} bytes); "
                              f"got a {type(v).__name__}")
        return out
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError, OverflowError) as e:
            raise invalid(f"input {name!r} is not a rectangular array of numbers "
                          f"({str(e).splitlines()[0]})") from None
    want = np.dtype(spec.dtype)
    kind = arr.dtype.kind
    if want.kind == "b":
        if kind == "b":
            return arr.astype(bool, copy=False)
        if kind in "iu" and arr.size and (np.all((arr == 0) | (arr == 1))):
            return arr.astype(bool)
        if kind in "iu" and not arr.size:
            return arr.astype(bool)
        raise invalid(f"input {name!r} must hold booleans (true/false or 0/1); got "
                      f"{_kind_text(arr)}")
    if want.kind in "iu":
        if kind not in "iub":
            raise invalid(f"input {name!r} must hold integers ({want.name}); got {_kind_text(arr)}")
        info = np.iinfo(want)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise invalid(f"input {name!r}: a value is outside the {want.name} range")
        return arr.astype(want, copy=False)
    if kind not in "iubf":
        raise invalid(f"input {name!r} must hold numbers ({want.name}); got {_kind_text(arr)}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(want, copy=False)
    if out.size:
        bad = ~np.isfinite(out)
        if bad.any():
            nan = np.isnan(out)
            if (bad & ~nan).any():
                raise invalid(f"input {name!r}: a value is infinite or beyond {want.name} range")
            if not allow_nan:
                raise invalid(f"input {name!r}: NaN is not allowed here (this input is not a "
                              f"feature with missing values)")
    return out


def _kind_text(arr: np.ndarray) -> str:
    if arr.dtype == object:
        types = sorted({type(v).__name__ for v in arr.reshape(-1)[:64]})
        return f"values of type {', '.join(types) or 'none'}"
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "floats",
            "U": "strings", "S": "bytes"}.get(arr.dtype.kind, f"dtype {arr.dtype}")


def _object_array(value: Any, name: str) -> np.ndarray:
    """Nested lists of strings/bytes -> an object array (ragged nesting is an error)."""
    try:
        arr = np.empty(_nested_shape(value, name), dtype=object)
    except ValueError as e:
        raise invalid(f"input {name!r}: {e}") from None
    if arr.ndim == 0:
        arr[()] = value
    else:
        for idx in np.ndindex(arr.shape):
            v = value
            for i in idx:
                v = v[i]
            arr[idx] = v
    return arr


def _nested_shape(value: Any, name: str, depth: int = 0) -> tuple[int, ...]:
    if depth > 32:
        raise ValueError("nested more than 32 levels deep")
    if not isinstance(value, (list, tuple)):
        return ()
    if not value:
        return (0,)
    inner = [_nested_shape(v, name, depth + 1) for v in value]
    if any(s != inner[0] for s in inner):
        raise ValueError("rows have different lengths; expected a rectangular array")
    return (len(value),) + inner[0]


# ---------------------------------------------------------------------------------- executors
def _bucket(buckets: Sequence[int], n: int) -> int:
    i = bisect.bisect_left(buckets, n)
    return buckets[i] if i < len(buckets) else n


def _pad_value(spec: TensorSpec):
    if spec.is_string:
        return ""
    return False if np.dtype(spec.dtype).kind == "b" else 0


def _pad(x: np.ndarray, axis: int, size: int, value) -> np.ndarray:
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    if x.dtype == object:
        out = np.full(x.shape[:axis] + (size,) + x.shape[axis + 1:], value, dtype=object)
        out[tuple(slice(0, n) for n in x.shape)] = x
        return out
    return np.pad(x, widths, constant_values=value)


class Executor:
    """Runs a list of validated requests (``(arrays, sizes)``) as one padded batch.

    Requests are concatenated on the batch axis, padded to the next batch bucket (and dims in
    ``dim_buckets`` to their next bucket: masked items), run by ``_call`` and cut back into one
    output dict per request. ``group_key`` says which requests may share a batch (the same
    padded non-batch sizes). ``warmup`` runs every bucket combination once at load."""

    info: SignatureInfo
    warmed = 0                      # bucket combinations compiled and run at load

    def __init__(self, info: SignatureInfo, model_inputs: Mapping[str, TensorSpec],
                 batch_buckets: Sequence[int], dim_buckets: Mapping[str, Sequence[int]]):
        self.info = info
        self._model_inputs = dict(model_inputs)
        self.buckets = tuple(batch_buckets) if info.batched else ()
        self.dim_buckets = {d: tuple(b) for d, b in dim_buckets.items()
                            if d in padded_dims(self._model_inputs)}

    def on_compile(self) -> None:
        """Called when a request needed a new program (a shape no bucket covers)."""

    def prepare(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Validated raw inputs (a whole batch) -> what ``_call`` takes; a bad value raises
        ``ServingError``."""
        return dict(arrays)

    def _call(self, batch: dict[str, np.ndarray], sizes: Mapping[str, int]
              ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Releases what the executor holds (compiled programs, device buffers)."""

    def group_key(self, sizes: Mapping[str, int]) -> tuple:
        return tuple(sorted((d, _bucket(self.dim_buckets[d], n) if d in self.dim_buckets else n)
                            for d, n in sizes.items() if d != BATCH))

    def _zeros(self, sizes: Mapping[str, int]) -> dict[str, np.ndarray]:
        out = {}
        for k, s in self._model_inputs.items():
            shape = s.shape_for(sizes)
            out[k] = (np.full(shape, _pad_value(s), dtype=object) if s.is_string
                      else np.zeros(shape, np.dtype(s.dtype)))
        return out

    def warmup(self) -> int:
        """Runs every bucket combination once (compiling it); returns how many."""
        dims = sorted({d for s in self._model_inputs.values() for d in s.dims
                       if isinstance(d, str) and d != BATCH})
        if any(d not in self.dim_buckets for d in dims):
            return 0  # an unpadded symbolic dim: shapes are only known from requests
        grid = [self.buckets or (1,)] + [self.dim_buckets[d] for d in dims]
        names = [BATCH] + dims
        combos = list(itertools.product(*grid))
        for combo in combos:
            sizes = dict(zip(names, combo))
            self._call(self._zeros(sizes), sizes)
        return len(combos)

    def run(self, requests: Sequence[tuple[dict, dict]]) -> list[dict[str, np.ndarray] | Exception]:
        """One output dict per request, or the error of a request whose inputs could not be
        encoded (the others still run)."""
        target = {}
        for d, buckets in self.dim_buckets.items():
            n = max((s[d] for _, s in requests if d in s), default=None)
            if n is not None:
                target[d] = _bucket(buckets, n)
        parts = [self._pad_dims(arrays, target) for arrays, _ in requests]
        raw = parts[0] if len(parts) == 1 else {
            k: np.concatenate([p[k] for p in parts]) for k in self.info.inputs}
        try:
            batch = self.prepare(raw)      # one encoder call for the whole batch
        except ServingError:
            if len(requests) == 1:
                raise
            # Find the request at fault; the rest run without it.
            results: list = [None] * len(requests)
            good = []
            for i, (p, req) in enumerate(zip(parts, requests)):
                try:
                    self.prepare(p)
                    good.append(i)
                except ServingError as e:
                    results[i] = e
            if good:
                for i, out in zip(good, self.run([requests[i] for i in good])):
                    results[i] = out
            return results
        rows = sum(s.get(BATCH, 1) for _, s in requests)
        outputs = self._run_rows(batch, rows, target)
        return _split(outputs, self.info.outputs, requests)

    def _pad_dims(self, arrays: Mapping[str, np.ndarray], target: Mapping[str, int]) -> dict:
        """Pads a request's raw inputs on the bucketed dims (masked items, empty strings)."""
        out = {}
        for k, spec in self.info.inputs.items():
            x = arrays[k]
            for i, d in enumerate(spec.dims):
                if d in target:
                    x = _pad(x, i, target[d], _pad_value(spec))
            out[k] = x
        return out

    def _run_rows(self, batch: dict, rows: int, target: dict) -> dict[str, np.ndarray]:
        if not self.buckets:
            return self._call(batch, {**self._sizes(batch), **target})
        largest = self.buckets[-1]
        if rows > largest:  # a request larger than every bucket: run it in chunks
            chunks = [self._run_rows({k: v[i:i + largest] for k, v in batch.items()},
                                     min(largest, rows - i), target)
                      for i in range(0, rows, largest)]
            return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        size = _bucket(self.buckets, rows)
        batch = {k: _pad(v, 0, size, _pad_value(self._model_inputs[k])) for k, v in batch.items()}
        out = self._call(batch, {**self._sizes(batch), **target, BATCH: size})
        return {k: v[:rows] if self.info.outputs[k].dims[:1] == (BATCH,) else v
                for k, v in out.items()}

    def _sizes(self, batch: Mapping[str, np.ndarray]) -> dict[str, int]:
        sizes = {}
        for k, s in self._model_inputs.items():
            for i, d in enumerate(s.dims):
                if isinstance(d, str):
                    sizes[d] = batch[k].shape[i]
        return sizes


def _split(outputs: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec],
           requests: Sequence[tuple[dict, dict]]) -> list[dict[str, np.ndarray]]:
    """Cuts batch outputs back into per-request outputs of the requests' own sizes."""
    results, start = [], 0
    for _, sizes in requests:
        rows = sizes.get(BATCH, 1)
        one = {}
        for k, v in outputs.items():
            spec = specs[k]
            index = []
            for d in spec.dims:
                if d == BATCH:
                    index.append(slice(start, start + rows))
                elif isinstance(d, str) and d in sizes:
                    index.append(slice(0, sizes[d]))
                else:
                    index.append(slice(None))
            one[k] = v[tuple(index)]
        results.append(one)
        start += rows
    return results


def padded_dims(model_inputs: Mapping[str, TensorSpec]) -> set[str]:
    """Non-batch symbolic dims covered by a boolean mask input: padding them with masked-out
    items (mask ``False``) leaves the real items' outputs unchanged, so they can be bucketed."""
    out = set()
    for s in model_inputs.values():
        if not s.is_string and np.dtype(s.dtype).kind == "b":
            out |= {d for d in s.dims if isinstance(d, str) and d != BATCH}
    return out


class JaxExecutor(Executor):
    """The bundle's encoder (host) + the jitted JAX predict, compiled ahead of time per
    bucket combination and called directly (no dispatch-time tracing)."""

    def __init__(self, bundle, info: SignatureInfo, batch_buckets: Sequence[int],
                 dim_buckets: Mapping[str, Sequence[int]]):
        import jax

        sig = bundle.signatures[info.name]
        super().__init__(info, specs_of(sig.model_inputs), batch_buckets, dim_buckets)
        self._sig = sig
        self._variables = jax.device_put(bundle.variables)
        self._consts = jax.device_put(bundle.consts)
        self._fn = bundle.jax_predict(info.name)
        self._compiled: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def prepare(self, arrays):
        if self._sig.encode_np is None:
            return dict(arrays)
        try:
            encoded = self._sig.encode_np(arrays)
        except (ValueError, TypeError, KeyError) as e:
            message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            raise invalid(f"inputs could not be encoded: {message}") from None
        return {k: np.asarray(encoded[k]).astype(np.dtype(s.dtype), copy=False)
                for k, s in self._model_inputs.items()}

    def _program(self, sizes: Mapping[str, int]):
        key = tuple(sorted(sizes.items()))
        program = self._compiled.get(key)
        if program is not None:
            return program
        import jax

        with self._lock:
            program = self._compiled.get(key)
            if program is None:
                args = {k: jax.ShapeDtypeStruct(s.shape_for(sizes), np.dtype(s.dtype))
                        for k, s in self._model_inputs.items()}
                program = self._fn.lower(self._variables, self._consts, args).compile()
                self._compiled[key] = program
                self.on_compile()
        return program

    def _call(self, batch, sizes) -> dict[str, np.ndarray]:
        out = self._program(sizes)(self._variables, self._consts, batch)
        return self._sig.lookup_np({k: np.asarray(v) for k, v in out.items()})

    def close(self) -> None:
        self._compiled.clear()


class SavedModelExecutor(Executor):
    """The SavedModel's TensorFlow signature on the raw inputs (``execution=savedmodel``),
    padded to the same buckets (TensorFlow compiles the lowered model once per shape)."""

    def __init__(self, path, info: SignatureInfo, batch_buckets: Sequence[int],
                 dim_buckets: Mapping[str, Sequence[int]]):
        from mlsd_jax.export.saved_model import load_saved_model

        super().__init__(info, info.inputs, batch_buckets, dim_buckets)
        self._fn = load_saved_model(path, info.name)
        import tensorflow as tf

        self._tf = tf

    def prepare(self, arrays):
        out = {}
        for k, x in arrays.items():
            if self.info.inputs[k].is_string:
                flat = np.empty(x.size, dtype=object)
                flat[:] = [v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v
                           for v in x.reshape(-1)]
                x = flat.reshape(x.shape)
            out[k] = x
        return out

    def _call(self, batch, sizes) -> dict[str, np.ndarray]:
        tf = self._tf
        feed = {k: tf.constant(v, dtype=tf.string if self.info.inputs[k].is_string else None)
                for k, v in batch.items()}
        return {k: v.numpy() for k, v in self._fn(**feed).items()}
