"""Wire formats: TF Serving REST JSON, KServe V2 JSON and TF Serving's ``TensorProto``.

Each decoder turns a request body into ``{input name: numpy array or nested list}`` for
:meth:`mlsd_jax.serving.runtime.SignatureInfo.validate`, and each encoder turns outputs back.
Malformed bodies raise :class:`~mlsd_jax.serving.errors.ServingError` naming the field.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping

import numpy as np

from mlsd_jax.serving.errors import ServingError, invalid
from mlsd_jax.serving.runtime import SignatureInfo, TensorSpec

# ------------------------------------------------------------------------------- JSON bodies


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise invalid(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise invalid("the request body is not valid JSON: nested too deeply") from None


def _object(body: Any, what: str) -> dict:
    if not isinstance(body, dict):
        raise invalid(f"{what} must be a JSON object, got {type(body).__name__}")
    return body


def _unb64(value: Any, field: str, depth: int = 0):
    """Replaces ``{"b64": "..."}`` leaves by bytes (for string inputs)."""
    if type(value) is str:
        return value
    if depth > 32:
        raise invalid(f"{field}: nested more than 32 levels deep")
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise invalid(f"{field}: an object here must be {{\"b64\": \"<base64 string>\"}}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"{field}: b64 value is not valid base64") from None
    if isinstance(value, list):
        if all(type(v) is str for v in value):     # the common case: plain strings
            return value
        return [_unb64(v, field, depth + 1) for v in value]
    return value


def _check_numbers(value: Any, field: str, depth: int = 0) -> None:
    """Numeric inputs hold numbers, booleans or nested lists of them, nothing else."""
    if depth > 32:
        raise invalid(f"{field}: nested more than 32 levels deep")
    if isinstance(value, list):
        for v in value:
            _check_numbers(v, field, depth + 1)
    elif not isinstance(value, (int, float, bool)):
        kind = "an object" if isinstance(value, dict) else type(value).__name__
        raise invalid(f"{field} must hold numbers; got {kind}")


def _tensor_value(spec: TensorSpec, value: Any, field: str):
    if spec.is_string:
        return _unb64(value, field)
    _check_numbers(value, field)
    return value


def decode_tfs(body: Any, info_for) -> tuple[str | None, dict, str]:
    """A TF Serving ``:predict`` body -> (signature name, inputs, format ``row``/``columnar``).

    ``info_for(signature_name) -> SignatureInfo`` resolves the signature (the inputs' dtypes
    decide how ``b64`` and numbers are read)."""
    body = _object(body, "the request body")
    sig_name = body.get("signature_name")
    if sig_name is not None and not isinstance(sig_name, str):
        raise invalid("signature_name must be a string")
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows == has_cols:
        raise invalid("the request body needs exactly one of \"instances\" (row format) or "
                      "\"inputs\" (columnar format)")
    unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r} in the request body; expected "
                      f"signature_name and instances or inputs")
    info: SignatureInfo = info_for(sig_name)
    names = list(info.inputs)
    if has_cols:
        inputs = body["inputs"]
        if not isinstance(inputs, dict) or (len(names) == 1 and names[0] not in inputs):
            if len(names) != 1:
                raise invalid(f"\"inputs\" must be an object {{input name: tensor}} with "
                              f"{names}")
            inputs = {names[0]: inputs}
        return sig_name, {k: _tensor_value(info.inputs[k], v, f"inputs.{k}")
                          if k in info.inputs else v for k, v in inputs.items()}, "columnar"
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise invalid("\"instances\" must be a non-empty list of rows")
    named = all(isinstance(r, dict) and not (set(r) == {"b64"} and len(names) == 1)
                for r in rows)
    if not named:
        if len(names) != 1:
            raise invalid(f"each of \"instances\" must be an object {{input name: value}} "
                          f"with {names}")
        return sig_name, {names[0]: _tensor_value(info.inputs[names[0]], rows,
                                                  f"instances.{names[0]}")}, "row"
    keys = set(rows[0])
    for i, r in enumerate(rows):
        if set(r) != keys:
            raise invalid(f"instances[{i}] has inputs {sorted(r)}, instances[0] has "
                          f"{sorted(keys)}; every row needs the same inputs")
    out = {}
    for k in keys:
        column = [r[k] for r in rows]
        out[k] = _tensor_value(info.inputs[k], column, f"instances.{k}") if k in info.inputs \
            else column
    return sig_name, out, "row"


def _json_array(x: np.ndarray):
    if x.dtype == object or x.dtype.kind in "SU":
        return _json_strings(x.tolist())
    if x.dtype.kind == "f":
        return _json_floats(x.tolist())
    return x.tolist()


def _json_floats(v):
    """Floats as JSON numbers; NaN and infinities as the ``NaN``/``Infinity`` literals TF
    Serving writes and reads (Python's json and most JSON libraries accept them)."""
    return v


def _json_strings(v):
    if isinstance(v, list):
        return [_json_strings(x) for x in v]
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(v).decode("ascii")}
    return v


def encode_tfs(outputs: Mapping[str, np.ndarray], fmt: str) -> dict:
    """Outputs as TF Serving returns them: ``predictions`` (rows) or ``outputs`` (columns);
    a single output is unwrapped, as TF Serving does."""
    names = list(outputs)
    if fmt == "columnar":
        if len(names) == 1:
            return {"outputs": _json_array(outputs[names[0]])}
        return {"outputs": {k: _json_array(v) for k, v in outputs.items()}}
    if len(names) == 1:
        return {"predictions": _json_array(outputs[names[0]])}
    columns = {k: _json_array(v) for k, v in outputs.items()}
    rows = len(next(iter(columns.values())))
    return {"predictions": [{k: columns[k][i] for k in names} for i in range(rows)]}


def decode_examples(body: Any, info: SignatureInfo) -> dict:
    """A ``:classify``/``:regress`` body (``examples`` + optional ``context``) -> inputs."""
    body = _object(body, "the request body")
    unknown = sorted(set(body) - {"signature_name", "examples", "context"})
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r}; expected signature_name, context, examples")
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise invalid("\"examples\" must be a non-empty list of objects {feature: value}")
    context = body.get("context") or {}
    context = _object(context, "\"context\"")
    columns: dict[str, list] = {k: [] for k in info.inputs}
    for i, ex in enumerate(examples):
        ex = {**context, **_object(ex, f"examples[{i}]")}
        extra = sorted(set(ex) - set(info.inputs))
        if extra:
            raise invalid(f"examples[{i}]: unknown feature {extra[0]!r}; the model takes "
                          f"{sorted(info.inputs)}")
        for k in info.inputs:
            if k not in ex:
                raise invalid(f"examples[{i}]: missing feature {k!r}")
            v = ex[k]
            if isinstance(v, list):   # tf.Example style: a feature is a list of one value
                if len(v) != 1:
                    raise invalid(f"examples[{i}].{k}: expected one value, got {len(v)}")
                v = v[0]
            columns[k].append(v)
    return {k: _tensor_value(info.inputs[k], v, f"examples.{k}") for k, v in columns.items()}


# ------------------------------------------------------------------------------- KServe V2
V2_TYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
            "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
            "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
            "BYTES": object}


def v2_datatype(spec: TensorSpec) -> str:
    if spec.is_string:
        return "BYTES"
    dt = np.dtype(spec.dtype)
    for name, t in V2_TYPES.items():
        if t is not object and np.dtype(t) == dt:
            return name
    raise ValueError(f"no V2 datatype for {dt}")


def _flatten(value, depth=0):
    if depth > 32:
        raise invalid("a tensor's data is nested more than 32 levels deep")
    if isinstance(value, list):
        out = []
        for v in value:
            out.extend(_flatten(v, depth + 1))
        return out
    return [value]


def decode_v2(body: Any, info_for) -> tuple[str | None, dict, list[str] | None, str | None]:
    """A V2 ``/infer`` body -> (signature, inputs, requested outputs or None, request id)."""
    body = _object(body, "the request body")
    unknown = sorted(set(body) - {"id", "parameters", "inputs", "outputs"})
    if unknown:
        raise invalid(f"unknown field {unknown[0]!r}; expected id, parameters, inputs, outputs")
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        raise invalid("id must be a string")
    params = _object(body.get("parameters") or {}, "parameters")
    sig_name = params.get("signature_name")
    if sig_name is not None and not isinstance(sig_name, str):
        raise invalid("parameters.signature_name must be a string")
    info: SignatureInfo = info_for(sig_name)
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise invalid("inputs must be a non-empty list of tensors {name, shape, datatype, data}")
    out = {}
    for i, t in enumerate(tensors):
        t = _object(t, f"inputs[{i}]")
        missing = [k for k in ("name", "shape", "datatype", "data") if k not in t]
        if missing:
            raise invalid(f"inputs[{i}] has no {missing[0]!r}; a tensor needs name, shape, "
                          f"datatype, data")
        name = t["name"]
        if not isinstance(name, str):
            raise invalid(f"inputs[{i}].name must be a string")
        if name in out:
            raise invalid(f"inputs[{i}]: input {name!r} given twice")
        if name not in info.inputs:
            raise invalid(f"inputs[{i}]: unknown input {name!r}; the model takes "
                          f"{sorted(info.inputs)}")
        shape = t["shape"]
        if (not isinstance(shape, list) or
                not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**31
                        for n in shape)):
            raise invalid(f"inputs[{i}] ({name}): shape must be a list of non-negative ints")
        dtype = t["datatype"]
        if dtype not in V2_TYPES:
            raise invalid(f"inputs[{i}] ({name}): datatype {dtype!r} is not one of "
                          f"{sorted(V2_TYPES)}")
        spec = info.inputs[name]
        if (dtype == "BYTES") != spec.is_string:
            raise invalid(f"inputs[{i}] ({name}): datatype {dtype} does not fit this input "
                          f"(expected {v2_datatype(spec)})")
        flat = _flatten(t["data"])
        size = int(np.prod(shape)) if shape else 1
        if len(flat) != size:
            raise invalid(f"inputs[{i}] ({name}): {len(flat)} values for shape {shape} "
                          f"({size} expected)")
        if dtype == "BYTES":
            for v in flat:
                if not isinstance(v, str):
                    raise invalid(f"inputs[{i}] ({name}): BYTES data must be strings")
            arr = np.empty(size, dtype=object)
            arr[:] = flat
        else:
            _check_numbers(flat, f"inputs[{i}] ({name}).data")
            kind = np.dtype(V2_TYPES[dtype]).kind
            if kind in "iub" and any(isinstance(v, float) for v in flat):
                raise invalid(f"inputs[{i}] ({name}): {dtype} data must be integers")
            try:
                arr = np.asarray(flat, dtype=np.float64 if kind == "f" else None)
                arr = arr.astype(V2_TYPES[dtype]) if kind != "f" else arr
            except (ValueError, OverflowError, TypeError) as e:
                raise invalid(f"inputs[{i}] ({name}): {e}") from None
        out[name] = arr.reshape(shape)
    requested = None
    if body.get("outputs") is not None:
        outs = body["outputs"]
        if not isinstance(outs, list):
            raise invalid("outputs must be a list of {name}")
        requested = []
        for i, o in enumerate(outs):
            o = _object(o, f"outputs[{i}]")
            if not isinstance(o.get("name"), str) or o["name"] not in info.outputs:
                raise invalid(f"outputs[{i}].name must be one of {sorted(info.outputs)}")
            requested.append(o["name"])
    return sig_name, out, requested, rid


def encode_v2(outputs: Mapping[str, np.ndarray], info: SignatureInfo) -> list[dict]:
    out = []
    for k, v in outputs.items():
        spec = info.outputs[k]
        flat = _json_array(np.asarray(v).reshape(-1))
        out.append({"name": k, "datatype": v2_datatype(spec), "shape": list(np.shape(v)),
                    "data": flat})
    return out


# ------------------------------------------------------------------------------- TensorProto
# tensorflow.DataType -> numpy (the dtypes a server sends and receives).
TF_TYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
            7: object, 9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32,
            23: np.uint64}
TF_TYPE_NAMES = {1: "DT_FLOAT", 2: "DT_DOUBLE", 3: "DT_INT32", 4: "DT_UINT8", 5: "DT_INT16",
                 6: "DT_INT8", 7: "DT_STRING", 9: "DT_INT64", 10: "DT_BOOL", 17: "DT_UINT16",
                 19: "DT_HALF", 22: "DT_UINT32", 23: "DT_UINT64"}
_VAL_FIELD = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 5: "int_val",
              6: "int_val", 9: "int64_val", 10: "bool_val", 17: "int_val", 22: "uint32_val",
              23: "uint64_val"}


def tf_dtype(spec: TensorSpec) -> int:
    if spec.is_string:
        return 7
    dt = np.dtype(spec.dtype)
    for code, t in TF_TYPES.items():
        if t is not object and np.dtype(t) == dt:
            return code
    raise ValueError(f"no TensorFlow dtype for {dt}")


def from_tensor_proto(proto, name: str) -> np.ndarray:
    """A ``tensorflow.TensorProto`` -> numpy (``tensor_content`` or the typed ``*_val``)."""
    if proto.dtype not in TF_TYPES:
        raise invalid(f"input {name!r}: dtype {proto.dtype} is not supported; send one of "
                      f"{sorted(TF_TYPE_NAMES.values())}")
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input {name!r}: the tensor shape must be known")
    shape = [d.size for d in proto.tensor_shape.dim]
    if any(n < 0 for n in shape):
        raise invalid(f"input {name!r}: shape {shape} has a negative size")
    size = int(np.prod(shape)) if shape else 1
    if size > 1 << 31:
        raise invalid(f"input {name!r}: shape {shape} is too large")
    if proto.dtype == 7:
        values = list(proto.string_val)
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
    elif proto.tensor_content:
        dt = np.dtype(TF_TYPES[proto.dtype]).newbyteorder("<")
        if len(proto.tensor_content) != size * dt.itemsize:
            raise invalid(f"input {name!r}: tensor_content has {len(proto.tensor_content)} "
                          f"bytes for shape {shape} ({size * dt.itemsize} expected)")
        arr = np.frombuffer(proto.tensor_content, dtype=dt).astype(TF_TYPES[proto.dtype])
    elif proto.dtype == 19:
        arr = np.asarray(proto.half_val, dtype=np.uint16).view(np.float16)
    else:
        arr = np.asarray(getattr(proto, _VAL_FIELD[proto.dtype]), dtype=TF_TYPES[proto.dtype])
    if arr.size == size:
        return arr.reshape(shape)
    if arr.size == 1:      # TF's convention: one value fills the whole shape
        return np.broadcast_to(arr, shape).copy()
    if arr.size == 0 and size == 0:
        return arr.reshape(shape)
    raise invalid(f"input {name!r}: {arr.size} values for shape {shape} ({size} expected)")


def to_tensor_proto(x: np.ndarray, proto) -> None:
    """Fills ``proto`` (a ``tensorflow.TensorProto``) from a numpy array."""
    x = np.asarray(x)
    for n in x.shape:
        proto.tensor_shape.dim.add().size = int(n)
    if x.dtype == object or x.dtype.kind in "SU":
        proto.dtype = 7
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode("utf-8")
                                for v in x.reshape(-1).tolist())
        return
    code = next((c for c, t in TF_TYPES.items() if t is not object and np.dtype(t) == x.dtype),
                None)
    if code is None:
        raise ServingError("INTERNAL", f"output dtype {x.dtype} has no TensorFlow dtype")
    proto.dtype = code
    proto.tensor_content = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).tobytes()


# ----------------------------------------------------------------------------- client helpers
def _client_value(x: np.ndarray):
    x = np.asarray(x)
    if x.dtype.kind in "SUO":
        def one(v):
            if isinstance(v, bytes):
                try:
                    return v.decode("utf-8")
                except UnicodeDecodeError:
                    return {"b64": base64.b64encode(v).decode("ascii")}
            return str(v)
        return np.vectorize(one, otypes=[object])(x).tolist() if x.size else x.tolist()
    return _json_floats(x.tolist()) if x.dtype.kind == "f" else x.tolist()


def tfs_request(inputs: Mapping[str, Any], fmt: str = "columnar",
                signature: str | None = None) -> dict:
    """A TF Serving ``:predict`` body for numpy inputs (batch on axis 0): ``columnar``
    (``inputs``) or ``row`` (``instances``); bytes that are not UTF-8 go as ``b64``."""
    columns = {k: _client_value(v) for k, v in inputs.items()}
    body: dict = {}
    if signature is not None:
        body["signature_name"] = signature
    if fmt == "columnar":
        body["inputs"] = columns
    else:
        rows = len(next(iter(columns.values())))
        body["instances"] = [{k: v[i] for k, v in columns.items()} for i in range(rows)]
    return body


def v2_request(inputs: Mapping[str, Any], request_id: str | None = None) -> dict:
    """A KServe V2 ``/infer`` body for numpy inputs (strings as ``BYTES``)."""
    tensors = []
    for k, v in inputs.items():
        x = np.asarray(v)
        if x.dtype.kind in "SUO":
            dtype = "BYTES"
            data = [b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else str(b)
                    for b in x.reshape(-1).tolist()]
        else:
            dtype = next(n for n, t in V2_TYPES.items()
                         if t is not object and np.dtype(t) == x.dtype)
            data = _client_value(x.reshape(-1))
        tensors.append({"name": k, "shape": list(x.shape), "datatype": dtype, "data": data})
    body = {"inputs": tensors}
    if request_id is not None:
        body["id"] = request_id
    return body
