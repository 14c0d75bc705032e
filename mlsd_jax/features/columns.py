"""Raw column coercion for the numpy encoders: one place that checks dtype and shape.

Raw columns are numpy arrays (or lists) with the batch on axis 0. Strings may be ``str``,
``np.str_`` or UTF-8 ``bytes`` (undecodable bytes are kept with ``surrogateescape``, so they
hash to what TensorFlow sees); ``None`` and float NaN are missing values everywhere.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping

import numpy as np

__all__ = ["column", "float_values", "infer_kind", "int_values", "list_values",
           "string_values"]

KINDS = ("str", "int", "float")


def column(columns: Mapping[str, Any], name: str, what: str, ndim: tuple[int, ...] = (1,)):
    """``columns[name]`` as an array, or an error naming the feature and what was expected."""
    if name not in columns:
        raise KeyError(f"{what}: no column {name!r} in the input (columns: {sorted(columns)})")
    arr = columns[name]
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr, dtype=object if _ragged(arr) else None)
    if arr.ndim not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"{what}: column {name!r} must be a {want} array with the batch on "
                         f"axis 0, got shape {arr.shape}")
    return arr


def _ragged(values) -> bool:
    try:
        return len({len(v) for v in values if isinstance(v, (list, tuple, np.ndarray))}) > 1
    except TypeError:
        return False


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _describe(arr: np.ndarray) -> str:
    if arr.dtype != object:
        return f"dtype {arr.dtype}"
    types = sorted({type(v).__name__ for v in arr.ravel().tolist() if not _missing(v)})
    return f"object values of type {', '.join(types) or 'None'}"


def infer_kind(arr: np.ndarray, what: str) -> str:
    """``"str"`` or ``"int"`` for an id column, judged from its non-missing values."""
    kind = arr.dtype.kind
    if kind in "US":
        return "str"
    if kind in "iub":
        return "int"
    if kind == "f":
        ok = arr[~np.isnan(arr)]
        if np.all(ok == np.round(ok)):
            return "int"  # whole numbers with NaN for missing (e.g. a pandas int column)
        raise TypeError(f"{what}: expected strings or integers, got {arr.dtype} values that "
                        f"are not whole numbers, such as {ok[ok != np.round(ok)][0]!r}")
    if kind == "O":
        values = [v for v in arr.ravel().tolist() if not _missing(v)]
        if values and all(isinstance(v, (str, bytes)) for v in values):
            return "str"
        if values and all(isinstance(v, (int, np.integer)) for v in values):
            return "int"
        if not values:
            raise ValueError(f"{what}: the training column has no non-missing values")
    raise TypeError(f"{what}: expected strings or integers, got {_describe(arr)}")


def string_values(arr: np.ndarray, what: str) -> list:
    """Flat list of ``str`` values (``None`` where missing)."""
    kind = arr.dtype.kind
    if kind == "U":
        return arr.ravel().tolist()
    if kind == "S":
        return [b.decode("utf-8", "surrogateescape") for b in arr.ravel().tolist()]
    if kind == "O":
        out = arr.ravel().tolist()
        for i, v in enumerate(out):
            if isinstance(v, str):
                continue
            if isinstance(v, bytes):
                out[i] = v.decode("utf-8", "surrogateescape")
            elif _missing(v):
                out[i] = None
            else:
                raise TypeError(f"{what}: expected strings (or None for missing), got a "
                                f"{type(v).__name__} value {v!r}")
        return out
    raise TypeError(f"{what}: expected strings (or None for missing), got {_describe(arr)}")


def int_values(arr: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(int64 values, missing mask)``; floats must be whole numbers or NaN."""
    kind = arr.dtype.kind
    flat = arr.ravel()
    if kind in "iub":
        return flat.astype(np.int64), np.zeros(flat.shape, bool)
    if kind == "f":
        missing = np.isnan(flat)
        ok = flat[~missing]
        if not np.all(ok == np.round(ok)):
            raise TypeError(f"{what}: expected integers (NaN for missing), got non-integral "
                            f"floats such as {ok[ok != np.round(ok)][0]!r}")
        return np.where(missing, 0, flat).astype(np.int64), missing
    if kind == "O":
        values = flat.tolist()
        missing = np.fromiter((_missing(v) for v in values), bool, len(values))
        bad = [v for v, m in zip(values, missing) if not m
               and (not isinstance(v, (int, np.integer)) or isinstance(v, bool))]
        if bad:
            raise TypeError(f"{what}: expected integers (None for missing), got a "
                            f"{type(bad[0]).__name__} value {bad[0]!r}")
        return np.asarray([0 if m else v for v, m in zip(values, missing)], np.int64), missing
    raise TypeError(f"{what}: expected integers, got {_describe(arr)}")


def float_values(arr: np.ndarray, what: str) -> np.ndarray:
    """float32 values (NaN where missing); strings are an error, not parsed."""
    kind = arr.dtype.kind
    if kind in "fiub":
        return arr.astype(np.float32)
    if kind == "O":
        values = arr.ravel().tolist()
        bad = [v for v in values if isinstance(v, (str, bytes))]
        if bad:
            raise TypeError(f"{what}: expected numbers (NaN or None for missing), got a string "
                            f"value {bad[0]!r}")
        try:
            return np.asarray(values, np.float64).astype(np.float32).reshape(arr.shape)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what}: expected numbers (NaN or None for missing): {e}") from None
    raise TypeError(f"{what}: expected numbers (float or int, NaN for missing), got "
                    f"{_describe(arr)}")


def list_values(arr: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of lists -> ``(flat object/number array, row lengths)``.

    ``arr`` is a 2-D array (rows padded with a missing value) or a 1-D array whose items are
    lists, tuples or arrays (``None`` for an empty row).
    """
    if arr.ndim == 2:
        return arr.reshape(-1), np.full(arr.shape[0], arr.shape[1], np.int64)
    rows = arr.tolist()
    for r in rows:
        if not (r is None or isinstance(r, (list, tuple, np.ndarray))):
            raise TypeError(f"{what}: expected a list of values per row (or None), got a "
                            f"{type(r).__name__} value {r!r}")
    rows = [[] if r is None else (r.tolist() if isinstance(r, np.ndarray) else r) for r in rows]
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    flat = np.empty(int(lengths.sum()), object)
    flat[:] = list(itertools.chain.from_iterable(rows))
    return flat, lengths
