"""Fitted features: the numpy and TensorFlow encoders and the JAX ``apply`` of each feature type.

:mod:`mlsd_jax.features.spec` declares features and fits them into these classes; each one
knows its raw columns, its output keys, how to encode raw values on both sides, its numeric
``consts`` and how to serialise its fitted state.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from mlsd_jax.features import text as _text
from mlsd_jax.features.columns import (column, float_values, int_values, list_values,
                                       string_values)
from mlsd_jax.features.hashing import hash_bucket_np, hash_bucket_tf, int_strings
from mlsd_jax.features.ids import IdMap, missing_for_kind, pack_rows
from mlsd_jax.features.numeric import signed_log1p

__all__ = ["FittedCategorical", "FittedCross", "FittedMultiCategorical", "FittedNumeric",
           "FittedSequence", "FittedText", "split_np", "to_raw", "transform"]

ASCII_SPACE = " \t\n\r\x0b\x0c"  # what tf.strings.strip removes (absl ASCII whitespace)
CROSS_SEP = "\x1f"               # unit separator between crossed values


def transform(spec, x, xp):
    """clip then signed log1p (NaN stays NaN)."""
    if spec.clip is not None:
        lo, hi = spec.clip
        x = xp.clip(x, -xp.inf if lo is None else lo, xp.inf if hi is None else hi)
    return signed_log1p(x) if spec.log else x


def split_np(spec, rows: list) -> tuple[list, np.ndarray]:
    """Rows of delimited strings -> (flat stripped items, row lengths), as tf.strings.split."""
    parts = [[] if r is None else [p.strip(ASCII_SPACE) for p in r.split(spec.sep)] for r in rows]
    lengths = np.fromiter((len(p) for p in parts), np.int64, len(parts))
    return [p for row in parts for p in row], lengths


def _tf_input(tensors, name: str, what: str, kind: str, rank: int, ragged_ok: bool = False):
    """``tensors[name]`` checked against the raw signature (dtype kind and rank)."""
    import tensorflow as tf
    if name not in tensors:
        raise KeyError(f"{what}: no input {name!r} (inputs: {sorted(tensors)})")
    x = tensors[name]
    if not (ragged_ok and isinstance(x, tf.RaggedTensor)):
        x = tf.convert_to_tensor(x)
    want = {"str": "tf.string", "int": "an integer dtype", "float": "a float or integer dtype"}
    ok = {"str": x.dtype == tf.string, "int": x.dtype.is_integer,
          "float": x.dtype.is_floating or x.dtype.is_integer}[kind]
    if not ok:
        raise TypeError(f"{what}: input {name!r} must be {want[kind]}, got {x.dtype.name}")
    if x.shape.rank is not None and x.shape.rank != rank:
        raise ValueError(f"{what}: input {name!r} must have rank {rank}, got shape {x.shape}")
    if kind == "int":
        x = tf.cast(x, tf.int64)
    elif kind == "float":
        x = tf.cast(x, tf.float32)
    return x


def _values(arr: np.ndarray, kind: str, what: str):
    return string_values(arr, what) if kind == "str" else int_values(arr, what)


class _Fitted:
    """Interface of a fitted feature; defaults for features without consts or tables."""

    spec: Any

    @property
    def what(self) -> str:
        return f"{type(self.spec).__name__} {self.spec.name!r}"

    def raw_columns(self) -> dict:            # column -> (dims, kind)
        raise NotImplementedError

    def encoded_signature(self) -> dict:      # key -> (dims, dtype)
        raise NotImplementedError

    def model_signature(self) -> dict:        # apply's outputs
        return self.encoded_signature()

    def cardinalities(self) -> dict:
        return {}

    def consts(self) -> dict:
        return {}

    def id_maps(self) -> dict:                # table key -> IdMap needing a TF table
        return {}

    def apply(self, consts, encoded) -> dict:
        return {k: encoded[k] for k in self.encoded_signature()}

    def state_json(self) -> dict:
        return {}

    def to_json(self) -> dict:
        return {"type": type(self.spec).__name__, "config": dataclasses.asdict(self.spec),
                "state": self.state_json()}


@dataclasses.dataclass(frozen=True)
class FittedNumeric(_Fitted):
    spec: Any
    fill: float
    mean: float
    std: float
    boundaries: tuple = ()
    low: float = 0.0
    high: float = 0.0

    def _edges(self) -> np.ndarray:
        """Segment edges of the piecewise-linear encoding: min, inner boundaries, max."""
        inner = [b for b in self.boundaries if self.low < b < self.high]
        return np.asarray([self.low, *inner, self.high], np.float32)

    def raw_columns(self):
        return {self.spec.name: (("batch",), "float")}

    def encoded_signature(self):
        return {self.spec.name: (("batch",), np.float32)}

    def model_signature(self):
        n, out = self.spec.name, {self.spec.name: (("batch",), np.float32)}
        if self.spec.missing_indicator:
            out[f"{n}/missing"] = (("batch",), np.float32)
        if self.spec.buckets is not None:
            out[f"{n}/bucket"] = (("batch",), np.int32)
        if self.spec.piecewise_linear:
            out[f"{n}/ple"] = (("batch", len(self._edges()) - 1), np.float32)
        return out

    def cardinalities(self):
        return {f"{self.spec.name}/bucket": len(self.boundaries) + 2} if self.spec.buckets else {}

    def consts(self):
        c = {"fill": np.float32(self.fill)}
        if self.spec.standardize:
            c.update(mean=np.float32(self.mean), std=np.float32(self.std))
        if self.spec.buckets is not None:
            c["boundaries"] = np.asarray(self.boundaries, np.float32)
        if self.spec.piecewise_linear:
            c["edges"] = self._edges()
        return {k: np.asarray(v, np.float32) for k, v in c.items()}

    def encode_np(self, columns):
        return {self.spec.name: float_values(column(columns, self.spec.name, self.what), self.what)}

    def encode_tf(self, tensors, tables):
        return {self.spec.name: _tf_input(tensors, self.spec.name, self.what, "float", 1)}

    def apply(self, consts, encoded):
        n, c = self.spec.name, consts[self.spec.name]
        x = jnp.asarray(encoded[n], jnp.float32)
        missing = jnp.isnan(x)
        out = {}
        t = jnp.where(missing, c["fill"], transform(self.spec, x, jnp))
        if self.spec.standardize:
            t = (t - c["mean"]) / c["std"]
        out[n] = t.astype(jnp.float32)
        if self.spec.missing_indicator:
            out[f"{n}/missing"] = missing.astype(jnp.float32)
        if self.spec.buckets is not None:
            b = c["boundaries"]
            idx = 1 + jnp.sum(x[..., None] >= b, axis=-1, dtype=jnp.int32)
            out[f"{n}/bucket"] = jnp.where(missing, 0, idx).astype(jnp.int32)
        if self.spec.piecewise_linear:
            e = c["edges"]
            width = jnp.maximum(e[1:] - e[:-1], 1e-12)
            ple = jnp.clip((x[..., None] - e[:-1]) / width, 0.0, 1.0)
            out[f"{n}/ple"] = jnp.where(missing[..., None], 0.0, ple).astype(jnp.float32)
        return out

    def state_json(self):
        return {"fill": self.fill, "mean": self.mean, "std": self.std,
                "boundaries": list(self.boundaries), "low": self.low, "high": self.high}


@dataclasses.dataclass(frozen=True)
class FittedCategorical(_Fitted):
    spec: Any
    ids: IdMap

    def raw_columns(self):
        return {self.spec.name: (("batch",), self.ids.kind)}

    def encoded_signature(self):
        return {self.spec.name: (("batch",), np.int32)}

    def cardinalities(self):
        return {self.spec.name: self.ids.cardinality}

    def id_maps(self):
        return {self.spec.name: self.ids}

    def encode_np(self, columns):
        arr = column(columns, self.spec.name, self.what)
        return {self.spec.name: self.ids.ids_np(_values(arr, self.ids.kind, self.what))}

    def encode_tf(self, tensors, tables):
        x = _tf_input(tensors, self.spec.name, self.what, self.ids.kind, 1)
        return {self.spec.name: self.ids.ids_tf(x, tables.get(self.spec.name))}

    def state_json(self):
        return {"ids": self.ids.to_json()}


class _FittedIdList(_Fitted):
    """Shared by MultiCategorical and Sequence: items per row -> padded ids + mask."""

    keep = "first"

    def encoded_signature(self):
        dims = ("batch", self.spec.max_len)
        return {self.spec.name: (dims, np.int32), f"{self.spec.name}/mask": (dims, np.bool_)}

    def cardinalities(self):
        return {self.spec.name: self.ids.cardinality}

    def id_maps(self):
        return {self.spec.name: self.ids}

    def encode_np(self, columns):
        ids, lengths = self._ids_np(columns)
        out, mask = pack_rows(ids, lengths, self.spec.max_len, self.keep)
        return {self.spec.name: out, f"{self.spec.name}/mask": mask}

    def encode_tf(self, tensors, tables):
        import tensorflow as tf
        table = tables.get(self.spec.name)
        items = self._items_tf(tensors)
        ids = tf.ragged.map_flat_values(lambda v: self.ids.ids_tf(v, table), items)
        ids = tf.ragged.boolean_mask(ids, ids > 0)
        n = self.spec.max_len
        ids = ids[:, -n:] if self.keep == "last" else ids[:, :n]
        dense = ids.to_tensor(default_value=0, shape=[None, n])
        return {self.spec.name: dense, f"{self.spec.name}/mask": dense > 0}

    def state_json(self):
        return {"ids": self.ids.to_json()}


@dataclasses.dataclass(frozen=True)
class FittedMultiCategorical(_FittedIdList):
    spec: Any
    ids: IdMap

    def raw_columns(self):
        return {self.spec.name: (("batch",), "str")}

    def _ids_np(self, columns):
        arr = column(columns, self.spec.name, self.what)
        flat, lengths = split_np(self.spec, string_values(arr, self.what))
        return self.ids.ids_np(flat), lengths

    def _items_tf(self, tensors):
        import tensorflow as tf
        x = _tf_input(tensors, self.spec.name, self.what, "str", 1)
        return tf.strings.strip(tf.strings.split(x, sep=self.spec.sep))


@dataclasses.dataclass(frozen=True)
class FittedSequence(_FittedIdList):
    spec: Any
    ids: IdMap

    @property
    def keep(self) -> str:
        return self.spec.keep

    def raw_columns(self):
        return {self.spec.name: (("batch", self.spec.name), self.ids.kind)}

    def _ids_np(self, columns):
        arr = column(columns, self.spec.name, self.what, ndim=(1, 2))
        flat, lengths = list_values(arr, self.what)
        return self.ids.ids_np(_values(flat, self.ids.kind, self.what)), lengths

    def _items_tf(self, tensors):
        import tensorflow as tf
        items = _tf_input(tensors, self.spec.name, self.what, self.ids.kind, 2, ragged_ok=True)
        return items if isinstance(items, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(items)


@dataclasses.dataclass(frozen=True)
class FittedText(_Fitted):
    spec: Any
    unicode_version: str

    @property
    def width(self) -> int:
        return _text.num_ngrams(self.spec.max_tokens, self.spec.ngrams)

    def raw_columns(self):
        return {self.spec.name: (("batch",), "str")}

    def encoded_signature(self):
        dims = ("batch", self.width)
        return {self.spec.name: (dims, np.int32), f"{self.spec.name}/mask": (dims, np.bool_)}

    def cardinalities(self):
        return {self.spec.name: 1 + self.spec.hash_buckets}

    def encode_np(self, columns):
        s = self.spec
        rows = string_values(column(columns, s.name, self.what), self.what)
        grams = [[] if r is None else _text.ngrams_np(
            _text.tokenize_np(r, s.lowercase, s.max_tokens), s.ngrams) for r in rows]
        lengths = np.fromiter((len(g) for g in grams), np.int64, len(grams))
        flat = [g for row in grams for g in row]
        ids = 1 + hash_bucket_np(flat, s.hash_buckets)
        out, mask = pack_rows(ids, lengths, self.width)
        return {s.name: out, f"{s.name}/mask": mask}

    def encode_tf(self, tensors, tables):
        import tensorflow as tf
        s = self.spec
        x = _tf_input(tensors, s.name, self.what, "str", 1)
        tokens = _text.tokenize_tf(x, s.lowercase, s.max_tokens)
        grams = tf.strings.ngrams(tokens, ngram_width=s.ngrams, separator=" ")
        ids = tf.ragged.map_flat_values(lambda g: 1 + hash_bucket_tf(g, s.hash_buckets), grams)
        dense = tf.cast(ids.to_tensor(default_value=0, shape=[None, self.width]), tf.int32)
        return {s.name: dense, f"{s.name}/mask": dense > 0}

    def state_json(self):
        return {"unicode_version": self.unicode_version}


@dataclasses.dataclass(frozen=True)
class FittedCross(_Fitted):
    spec: Any
    kinds: tuple

    @property
    def what(self) -> str:
        return f"Cross {self.spec.name!r}"

    def raw_columns(self):
        return {c: (("batch",), k) for c, k in zip(self.spec.columns, self.kinds)}

    def encoded_signature(self):
        return {self.spec.name: (("batch",), np.int32)}

    def cardinalities(self):
        return {self.spec.name: 1 + self.spec.hash_buckets}

    def encode_np(self, columns):
        parts, missing = [], None
        for c, kind in zip(self.spec.columns, self.kinds):
            values = _values(column(columns, c, self.what), kind, f"{self.what} column {c!r}")
            if kind == "str":
                drop = set(missing_for_kind(self.spec.missing_values, "str"))
                miss = np.fromiter((v is None or v in drop for v in values), bool, len(values))
                text = ["" if v is None else v for v in values]
            else:
                ints, miss = values
                miss = miss | np.isin(ints, np.asarray(missing_for_kind(
                    self.spec.missing_values, "int"), np.int64))
                text = int_strings(ints)
            parts.append(text)
            missing = miss if missing is None else missing | miss
        keys = [CROSS_SEP.join(p) for p in zip(*parts)]
        ids = 1 + hash_bucket_np(keys, self.spec.hash_buckets)
        return {self.spec.name: np.where(missing, 0, ids).astype(np.int32)}

    def encode_tf(self, tensors, tables):
        import tensorflow as tf
        parts, missing = [], None
        for c, kind in zip(self.spec.columns, self.kinds):
            x = _tf_input(tensors, c, f"{self.what} column {c!r}", kind, 1)
            miss = tf.zeros_like(x, tf.bool)
            for m in missing_for_kind(self.spec.missing_values, kind):
                miss = tf.logical_or(miss, tf.equal(x, m))
            parts.append(x if kind == "str" else tf.strings.as_string(x))
            missing = miss if missing is None else tf.logical_or(missing, miss)
        keys = tf.strings.join(parts, separator=CROSS_SEP)
        ids = 1 + hash_bucket_tf(keys, self.spec.hash_buckets)
        return {self.spec.name: tf.cast(tf.where(missing, tf.zeros_like(ids), ids), tf.int32)}

    def state_json(self):
        return {"kinds": list(self.kinds)}


def to_raw(f: _Fitted, col: str, dims, kind: str, columns) -> np.ndarray:
    """One column in client form (see :meth:`FittedFeatureSpec.to_raw`)."""
    what = f.what
    if kind == "float":
        return float_values(column(columns, col, what), what)
    missing = getattr(f.spec, "missing_values", ("", -1))
    fill_int = next(iter(missing_for_kind(missing, "int")), -1)
    if len(dims) == 2:
        flat, lengths = list_values(column(columns, col, what, ndim=(1, 2)), what)
    else:
        flat, lengths = column(columns, col, what), None
    if kind == "str":
        values = np.asarray([b"" if v is None else v.encode("utf-8", "surrogateescape")
                             for v in string_values(flat, what)], object)
        fill = b""
    else:
        ints, miss = int_values(flat, what)
        values, fill = np.where(miss, fill_int, ints), fill_int
    if lengths is None:
        return values
    out = np.full((len(lengths), int(lengths.max(initial=0))), fill, values.dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(len(rows)) - (np.cumsum(lengths) - lengths)[rows]
    out[rows, pos] = values
    return out
