"""Declarative feature specs: one feature path for training (numpy + JAX) and serving (TF).

A :class:`FeatureSpec` lists features; ``spec.fit(columns)`` (training split only) returns a
:class:`FittedFeatureSpec` with three stages:

``encode_np(columns)`` / ``encode_tf(tensors)``
    String work (vocabulary lookup, hashing, splitting, tokenising) from raw columns to numeric
    arrays, in numpy for the training pipeline and in TensorFlow ops inside the exported
    SavedModel. The two agree bit for bit (ids, masks) and exactly on float32 values.
``apply(consts, encoded)``
    Pure JAX numeric transforms (clip, signed log1p, NaN imputation with the training mean plus
    an indicator, standardisation, bucketisation) with the fitted ``consts`` pytree, so they run
    inside the jitted step, live in checkpoints and export through jax2tf.

Keys (feature ``f``; ids are int32 with 0 = missing/padding, masks bool, values float32):

============================  ==============================  ===================================
feature                       ``encode_np`` / ``encode_tf``   ``apply`` (model inputs)
============================  ==============================  ===================================
Numeric                       ``f`` [batch] raw value, NaN    ``f`` [batch] transformed value;
                              where missing                   ``f/missing`` [batch] float 0/1 (if
                                                              ``missing_indicator``); ``f/bucket``
                                                              [batch] int32 (if ``buckets``)
Categorical                   ``f`` [batch]                   same (passed through)
MultiCategorical, Sequence    ``f`` [batch, max_len] ids,     same
                              ``f/mask`` [batch, max_len]
Text                          ``f`` [batch, L] n-gram ids,    same
                              ``f/mask``; L = number of
                              n-grams of ``max_tokens`` tokens
Cross                         ``name`` [batch] (default       same
                              ``"a_x_b"``)
============================  ==============================  ===================================

Raw inputs (``raw_signature``): numerics float32 [batch] (NaN = missing); categorical columns
str or int64 [batch] (kind inferred from the training column); MultiCategorical and Text str
[batch]; Sequence str or int64 [batch, history] padded with a missing value ("" or -1 by
default; numpy also takes a 1-D array of lists).
"""
from __future__ import annotations

import dataclasses
import json
import typing
import warnings
from typing import Any, Mapping, Optional

import numpy as np

from mlsd_jax.features import text as _text
from mlsd_jax.features.columns import (column, float_values, infer_kind, int_values,
                                       list_values, string_values)
from mlsd_jax.features.encoders import (FittedCategorical, FittedCross, FittedMultiCategorical,
                                        FittedNumeric, FittedSequence, FittedText, split_np,
                                        to_raw, transform)
from mlsd_jax.features.hashing import MAX_BUCKETS
from mlsd_jax.features.ids import IdMap, fit_id_map

__all__ = ["Categorical", "Cross", "FeatureSpec", "FittedFeatureSpec", "MultiCategorical",
           "Numeric", "Sequence", "Text"]

FORMAT = "mlsd_jax.feature_spec/1"
RAW_DTYPES = {"str": np.str_, "int": np.int64, "float": np.float32}


# ---------------------------------------------------------------------------------------------
# Feature declarations
# ---------------------------------------------------------------------------------------------
def _check(cond: bool, what: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{what}: {msg}")


def _tuple(obj, field: str) -> None:
    value = getattr(obj, field)
    if isinstance(value, list):
        object.__setattr__(obj, field, tuple(value))


def _check_name(name: str, what: str) -> None:
    _check(isinstance(name, str) and name and "/" not in name, what,
           "the name must be a non-empty string without '/' (it prefixes output keys)")


def _check_ids(obj, what: str) -> None:
    """Shared checks of the vocabulary / hashing options."""
    _tuple(obj, "missing_values")
    _check(obj.num_oov >= 0, what, f"num_oov must be >= 0, got {obj.num_oov}")
    _check(obj.min_count >= 1, what, f"min_count must be >= 1, got {obj.min_count}")
    _check(obj.hash_buckets is None or 1 <= obj.hash_buckets <= MAX_BUCKETS, what,
           f"hash_buckets must be in [1, {MAX_BUCKETS}], got {obj.hash_buckets}")
    _check(obj.max_vocab is None or obj.max_vocab >= 0, what, "max_vocab must be >= 0")


@dataclasses.dataclass(frozen=True)
class Numeric:
    """A number per row. ``clip=(lo, hi)`` (either may be None) is applied first, then ``log``
    (signed log1p), NaN imputation with the training mean and ``standardize`` (training mean and
    std). ``buckets``: a count (training quantiles) or increasing boundaries in raw units; bucket
    ids are 0 for missing, else ``1 + #{boundaries <= x}``. ``piecewise_linear`` (with
    ``buckets``) also gives the piecewise-linear encoding of Gorishniy et al. (2022): one value
    per bucket between the training minimum and maximum, 0 below it, 1 above, the position
    within it in between."""

    name: str
    log: bool = False
    clip: Optional[tuple] = None
    standardize: bool = True
    buckets: Any = None
    missing_indicator: bool = True
    piecewise_linear: bool = False

    def __post_init__(self):
        what = f"Numeric {self.name!r}"
        _check_name(self.name, what)
        _tuple(self, "clip")
        _tuple(self, "buckets")
        if self.clip is not None:
            _check(len(self.clip) == 2, what, f"clip must be (lo, hi), got {self.clip}")
            lo, hi = self.clip
            _check(lo is None or hi is None or lo < hi, what,
                   f"clip needs lo < hi, got {self.clip}")
        if isinstance(self.buckets, tuple):
            b = np.asarray(self.buckets, np.float64)
            _check(b.ndim == 1 and len(b) >= 1 and bool(np.all(np.diff(b) > 0)), what,
                   f"bucket boundaries must be strictly increasing, got {self.buckets}")
        elif self.buckets is not None:
            _check(isinstance(self.buckets, int) and self.buckets >= 1, what,
                   f"buckets must be a count >= 1 or a list of boundaries, got {self.buckets!r}")
        _check(not self.piecewise_linear or self.buckets is not None, what,
               "piecewise_linear needs buckets (a count or boundaries)")

    def fit(self, columns) -> "FittedNumeric":
        what = f"Numeric {self.name!r}"
        x = float_values(column(columns, self.name, what), what)
        seen = x[~np.isnan(x)].astype(np.float64)
        _check(len(seen) > 0, what, "the training column has no non-missing values")
        t = transform(self, seen, np)
        std = float(t.std())
        if isinstance(self.buckets, int):
            q = np.quantile(seen, np.linspace(0, 1, self.buckets + 1)[1:-1])
            bounds = np.unique(q.astype(np.float32))
        else:
            bounds = np.asarray(self.buckets or (), np.float32)
        return FittedNumeric(self, fill=float(np.float32(t.mean())),
                             mean=float(np.float32(t.mean())),
                             std=float(np.float32(std if std > 1e-6 else 1.0)),
                             boundaries=tuple(float(b) for b in bounds),
                             low=float(np.float32(seen.min())), high=float(np.float32(seen.max())))


@dataclasses.dataclass(frozen=True)
class Categorical:
    """One string or integer category per row: vocabulary of values seen ``min_count`` times in
    training (``max_vocab`` most frequent) plus ``num_oov`` buckets for unseen values, or
    ``hash_buckets`` hashed ids. ``missing_values`` (and None/NaN) map to id 0."""

    name: str
    min_count: int = 1
    num_oov: int = 1
    hash_buckets: Optional[int] = None
    missing_values: tuple = ("", -1)
    max_vocab: Optional[int] = None

    def __post_init__(self):
        _check_name(self.name, f"Categorical {self.name!r}")
        _check_ids(self, f"Categorical {self.name!r}")

    def fit(self, columns) -> "FittedCategorical":
        what = f"Categorical {self.name!r}"
        arr = column(columns, self.name, what)
        kind = infer_kind(arr, what)
        values = string_values(arr, what) if kind == "str" else int_values(arr, what)
        return FittedCategorical(self, _fit_ids(self, what, kind, values))


def _fit_ids(spec, what: str, kind: str, values, extra_missing: tuple = ()) -> IdMap:
    return fit_id_map(what, kind, values, missing_values=tuple(spec.missing_values) + extra_missing,
                      min_count=spec.min_count, num_oov=spec.num_oov,
                      hash_buckets=spec.hash_buckets, max_vocab=spec.max_vocab)


@dataclasses.dataclass(frozen=True)
class MultiCategorical:
    """A ``sep``-delimited string of categories per row ("Action|Comedy"). Items are stripped of
    ASCII whitespace; empty and missing items are dropped; the first ``max_len`` are kept."""

    name: str
    sep: str = "|"
    max_len: int = 8
    min_count: int = 1
    num_oov: int = 1
    hash_buckets: Optional[int] = None
    missing_values: tuple = ("",)
    max_vocab: Optional[int] = None

    def __post_init__(self):
        what = f"MultiCategorical {self.name!r}"
        _check_name(self.name, what)
        _check_ids(self, what)
        _check(isinstance(self.sep, str) and len(self.sep) > 0, what, "sep must be non-empty")
        _check(self.max_len >= 1, what, f"max_len must be >= 1, got {self.max_len}")

    def fit(self, columns) -> FittedMultiCategorical:
        what = f"MultiCategorical {self.name!r}"
        items, _ = split_np(self, string_values(column(columns, self.name, what), what))
        return FittedMultiCategorical(self, _fit_ids(self, what, "str", items, ("",)))


@dataclasses.dataclass(frozen=True)
class Sequence:
    """A list of ids or strings per row (a history). Missing items ("" / -1 by default; they
    also pad rows of the dense raw input) are dropped, then the last (``keep="last"``) or first
    ``max_len`` items are kept."""

    name: str
    max_len: int = 50
    min_count: int = 1
    num_oov: int = 1
    hash_buckets: Optional[int] = None
    missing_values: tuple = ("", -1)
    max_vocab: Optional[int] = None
    keep: str = "last"

    def __post_init__(self):
        what = f"Sequence {self.name!r}"
        _check_name(self.name, what)
        _check_ids(self, what)
        _check(self.max_len >= 1, what, f"max_len must be >= 1, got {self.max_len}")
        _check(self.keep in ("first", "last"), what,
               f"keep must be 'first' or 'last', got {self.keep!r}")

    def fit(self, columns) -> FittedSequence:
        what = f"Sequence {self.name!r}"
        flat, _ = list_values(column(columns, self.name, what, ndim=(1, 2)), what)
        kind = infer_kind(flat, what)
        values = string_values(flat, what) if kind == "str" else int_values(flat, what)
        extra = ("",) if kind == "str" else ()
        return FittedSequence(self, _fit_ids(self, what, kind, values, extra))


@dataclasses.dataclass(frozen=True)
class Text:
    """Free text -> hashed word n-grams (see :mod:`mlsd_jax.features.text` for the tokeniser).
    The first ``max_tokens`` tokens are kept; n-gram ids are ``1 + Fingerprint64(ngram) %
    hash_buckets``, all 1-grams first, then 2-grams, ..."""

    name: str
    ngrams: tuple = (1,)
    hash_buckets: int = 2 ** 18
    max_tokens: int = 256
    lowercase: bool = True

    def __post_init__(self):
        what = f"Text {self.name!r}"
        _check_name(self.name, what)
        if isinstance(self.ngrams, int):
            object.__setattr__(self, "ngrams", (self.ngrams,))
        _tuple(self, "ngrams")
        _check(len(self.ngrams) > 0 and all(isinstance(n, int) and n >= 1 for n in self.ngrams)
               and len(set(self.ngrams)) == len(self.ngrams), what,
               f"ngrams must be distinct widths >= 1, got {self.ngrams}")
        _check(1 <= self.hash_buckets <= MAX_BUCKETS, what,
               f"hash_buckets must be in [1, {MAX_BUCKETS}], got {self.hash_buckets}")
        _check(self.max_tokens >= 1, what, f"max_tokens must be >= 1, got {self.max_tokens}")
        _check(_text.num_ngrams(self.max_tokens, self.ngrams) > 0, what,
               f"no n-gram of widths {self.ngrams} fits in max_tokens={self.max_tokens}")

    def fit(self, columns) -> "FittedText":
        what = f"Text {self.name!r}"
        string_values(column(columns, self.name, what), what)  # checks the column
        return FittedText(self, _text.UNICODE_VERSION)


@dataclasses.dataclass(frozen=True)
class Cross:
    """Hashed cross of raw categorical columns: ``1 + Fingerprint64("a\\x1fb") % hash_buckets``
    over the values' text (integers as decimals); 0 when any value is missing."""

    columns: tuple
    hash_buckets: int = 1000
    name: Optional[str] = None
    missing_values: tuple = ("", -1)

    def __post_init__(self):
        _tuple(self, "columns")
        _tuple(self, "missing_values")
        what = f"Cross {self.columns}"
        _check(len(self.columns) >= 2 and all(isinstance(c, str) for c in self.columns), what,
               "columns must name at least two raw columns")
        if self.name is None:
            object.__setattr__(self, "name", "_x_".join(self.columns))
        _check_name(self.name, what)
        _check(1 <= self.hash_buckets <= MAX_BUCKETS, what,
               f"hash_buckets must be in [1, {MAX_BUCKETS}], got {self.hash_buckets}")

    def fit(self, columns) -> "FittedCross":
        what = f"Cross {self.name!r}"
        kinds = tuple(infer_kind(column(columns, c, what), f"{what} column {c!r}")
                      for c in self.columns)
        return FittedCross(self, kinds)


Feature = typing.Union[Numeric, Categorical, MultiCategorical, Sequence, Text, Cross]
_TYPES = {cls.__name__: cls
          for cls in (Numeric, Categorical, MultiCategorical, Sequence, Text, Cross)}


def _fitted_from_json(obj: dict):
    kind = obj.get("type")
    if kind not in _TYPES:
        raise ValueError(f"unknown feature type {kind!r}; expected one of {sorted(_TYPES)}")
    spec = _TYPES[kind](**obj["config"])
    st = obj["state"]
    what = f"{kind} {spec.name!r}"
    if kind == "Numeric":
        return FittedNumeric(spec, fill=st["fill"], mean=st["mean"], std=st["std"],
                             boundaries=tuple(st["boundaries"]), low=st.get("low", 0.0),
                             high=st.get("high", 0.0))
    if kind == "Categorical":
        return FittedCategorical(spec, IdMap.from_json(what, st["ids"]))
    if kind == "MultiCategorical":
        return FittedMultiCategorical(spec, IdMap.from_json(what, st["ids"]))
    if kind == "Sequence":
        return FittedSequence(spec, IdMap.from_json(what, st["ids"]))
    if kind == "Text":
        if st["unicode_version"] != _text.UNICODE_VERSION:
            warnings.warn(f"{what} was fitted with Unicode {st['unicode_version']}; this Python "
                          f"has {_text.UNICODE_VERSION}: tokens of characters assigned in "
                          "between may differ from training", stacklevel=3)
        return FittedText(spec, st["unicode_version"])
    return FittedCross(spec, tuple(st["kinds"]))


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------
class FeatureSpec:
    """An ordered list of feature declarations; :meth:`fit` it on the training split."""

    def __init__(self, features: typing.Sequence[Feature]):
        self.features = tuple(features)
        for f in self.features:
            if type(f) not in _TYPES.values():
                raise TypeError(f"FeatureSpec: {f!r} is not a feature; expected one of "
                                f"{sorted(_TYPES)}")
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"FeatureSpec: duplicate feature names {dup}")

    def fit(self, columns: Mapping[str, Any]) -> "FittedFeatureSpec":
        """Fits vocabularies and statistics on training ``columns`` (name -> raw array)."""
        return FittedFeatureSpec([f.fit(columns) for f in self.features])


class FittedFeatureSpec:
    """Fitted features: encoders (numpy / TF), the JAX ``apply`` and their signatures."""

    def __init__(self, fitted: typing.Sequence[Any]):
        self.fitted = tuple(fitted)
        self._tf_module = None
        raw, owner = {}, {}
        for f in self.fitted:
            for col, (dims, kind) in f.raw_columns().items():
                if col in raw and raw[col] != (dims, kind):
                    raise ValueError(
                        f"{f.what} reads column {col!r} as {kind} {dims}, but {owner[col]} "
                        f"reads it as {raw[col][1]} {raw[col][0]}")
                raw[col], owner[col] = (dims, kind), f.what
        self._raw = raw
        keys = [k for f in self.fitted for k in f.model_signature()]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"FeatureSpec: output keys {dup} are produced twice")

    # ---- signatures ----------------------------------------------------------------------------
    @property
    def raw_signature(self) -> dict:
        """Raw input column -> (named dims, dtype as a client sends it)."""
        return {c: (dims, RAW_DTYPES[kind]) for c, (dims, kind) in self._raw.items()}

    @property
    def encoded_signature(self) -> dict:
        """``encode_np`` / ``encode_tf`` output key -> (dims, numpy dtype)."""
        return {k: v for f in self.fitted for k, v in f.encoded_signature().items()}

    @property
    def model_signature(self) -> dict:
        """``apply`` output key -> (dims, numpy dtype): the model's inputs."""
        return {k: v for f in self.fitted for k, v in f.model_signature().items()}

    @property
    def cardinalities(self) -> dict:
        """Id output key -> embedding rows needed (id 0 = missing/padding included)."""
        return {k: v for f in self.fitted for k, v in f.cardinalities().items()}

    @property
    def consts(self) -> dict:
        """Fitted numeric statistics (a pytree of float32 numpy arrays) for :meth:`apply`."""
        return {f.spec.name: c for f in self.fitted if (c := f.consts())}

    # ---- encoders --------------------------------------------------------------------------------
    def encode_np(self, columns: Mapping[str, Any]) -> dict:
        """Raw numpy columns -> numeric arrays (``encoded_signature``)."""
        sizes = {}
        for col in self._raw:
            if col in columns:
                sizes[col] = len(columns[col])
        if len(set(sizes.values())) > 1:
            raise ValueError(f"FeatureSpec: columns have different batch sizes: {sizes}")
        return {k: v for f in self.fitted for k, v in f.encode_np(columns).items()}

    def encode_tf(self, tensors: Mapping[str, Any]) -> dict:
        """TensorFlow twin of :meth:`encode_np` (traceable in ``tf.function``, unknown batch).

        Vocabulary tables are created on first use; a SavedModel must track them, e.g.
        ``module.features = fitted.tf_module()`` on the exported ``tf.Module``. Works with and
        without AutoGraph; ``tf.function(..., autograph=False)`` traces faster (and is needed
        for reasonable trace times when jax2tf-converted functions are in the same graph).
        """
        tables = self.tf_module().tables
        return {k: v for f in self.fitted for k, v in f.encode_tf(tensors, tables).items()}

    def tf_module(self):
        """A ``tf.Module`` owning the vocabulary lookup tables (created once, eagerly)."""
        if self._tf_module is None:
            import tensorflow as tf
            with tf.init_scope():
                module = tf.Module(name="feature_spec")
                tables = {}
                for f in self.fitted:
                    for key, ids in f.id_maps().items():
                        table = ids.make_tf_table()
                        if table is not None:
                            tables[key] = table
                module.tables = tables
            self._tf_module = module
        return self._tf_module

    def tf_input_signature(self) -> dict:
        """``raw_signature`` as ``tf.TensorSpec``s with unknown batch (and list) length."""
        import tensorflow as tf

        def spec(name, dims, dtype):
            tf_dtype = tf.string if dtype is np.str_ else tf.as_dtype(dtype)
            return tf.TensorSpec([None] * len(dims), tf_dtype, name=name)

        return {c: spec(c, dims, dt) for c, (dims, dt) in self.raw_signature.items()}

    def to_raw(self, columns: Mapping[str, Any]) -> dict:
        """Raw numpy columns -> dense arrays as a client sends them (``raw_signature``): strings
        as UTF-8 bytes objects ("" for missing), int64 (-1 or the first int missing value),
        float32 (NaN); list rows padded with the missing value."""
        out = {}
        for f in self.fitted:
            for col, (dims, kind) in f.raw_columns().items():
                out[col] = to_raw(f, col, dims, kind, columns)
        return out

    # ---- JAX ------------------------------------------------------------------------------
    def apply(self, consts, encoded: Mapping[str, Any]) -> dict:
        """Pure JAX: numeric transforms with ``consts``; ids and masks pass through."""
        return {k: v for f in self.fitted for k, v in f.apply(consts, encoded).items()}

    # ---- persistence ----------------------------------------------------------------------
    def to_json(self) -> dict:
        """A JSON-serialisable description (configs, vocabularies, statistics)."""
        return {"format": FORMAT, "features": [f.to_json() for f in self.fitted]}

    @classmethod
    def from_json(cls, obj) -> "FittedFeatureSpec":
        """Rebuilds from :meth:`to_json` output (a dict or its JSON text)."""
        if isinstance(obj, str):
            obj = json.loads(obj)
        if obj.get("format") != FORMAT:
            raise ValueError(f"FittedFeatureSpec.from_json: format {obj.get('format')!r}, "
                             f"expected {FORMAT!r}")
        return cls([_fitted_from_json(f) for f in obj["features"]])
