"""Raw categorical values -> int32 ids, the same in numpy and TensorFlow.

Id layout (every id feature): ``0`` = missing or padding; with a vocabulary, ``1..num_oov`` are
out-of-vocabulary buckets (an unseen value goes to ``1 + Fingerprint64(value) % num_oov``) and
``1 + num_oov + i`` is the ``i``-th vocabulary entry (most frequent first, ties by value); with
hashing, ``1 + Fingerprint64(value) % hash_buckets``. Integers hash as their decimal text.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from mlsd_jax.features.hashing import MAX_BUCKETS, hash_bucket_np, hash_bucket_tf, int_strings

__all__ = ["IdMap", "fit_id_map", "missing_for_kind", "pack_rows"]


def missing_for_kind(missing_values: Sequence[Any], kind: str) -> tuple:
    """The configured missing tokens that apply to a column of ``kind`` ("str" or "int")."""
    if kind == "str":
        return tuple(v for v in missing_values if isinstance(v, str))
    return tuple(int(v) for v in missing_values
                 if isinstance(v, (int, np.integer)) and not isinstance(v, bool))


@dataclasses.dataclass(frozen=True)
class IdMap:
    """A fitted value -> id mapping (vocabulary + OOV buckets, or hashing)."""

    what: str                        # "Categorical 'workclass'", for error messages
    kind: str                        # "str" or "int": the raw values' type
    missing: tuple                   # raw values that mean "missing" (id 0)
    num_oov: int = 1
    vocab: Optional[tuple] = None    # ordered keys (None when hashing)
    hash_buckets: Optional[int] = None

    @property
    def cardinality(self) -> int:
        """Rows an embedding table needs (id 0 included)."""
        if self.hash_buckets is not None:
            return 1 + self.hash_buckets
        return 1 + self.num_oov + len(self.vocab)

    # ---- numpy -------------------------------------------------------------------------------
    def ids_np(self, values) -> np.ndarray:
        """Flat raw values (``string_values`` list, or ``int_values`` pair) -> int32 ids."""
        if self.kind == "str":
            return self._ids_str(values)
        return self._ids_int(*values)

    def _oov(self, strings: list) -> np.ndarray:
        if self.num_oov <= 1:
            return np.full(len(strings), self.num_oov, np.int64)
        return 1 + hash_bucket_np(strings, self.num_oov)

    def _ids_str(self, values: list) -> np.ndarray:
        n = len(values)
        if self.hash_buckets is not None:
            missing = set(self.missing)
            miss = np.fromiter((v is None or v in missing for v in values), bool, n)
            safe = ["" if m else v for v, m in zip(values, miss)]
            return np.where(miss, 0, 1 + hash_bucket_np(safe, self.hash_buckets)).astype(np.int32)
        table = self._py_table()
        ids = np.fromiter((table.get(v, -1) for v in values), np.int64, n)
        unseen = np.flatnonzero(ids < 0)
        if len(unseen):
            ids[unseen] = self._oov([values[i] for i in unseen])
        return ids.astype(np.int32)

    def _ids_int(self, values: np.ndarray, miss: np.ndarray) -> np.ndarray:
        miss = miss | np.isin(values, np.asarray(self.missing, np.int64))
        if self.hash_buckets is not None:
            ids = 1 + hash_bucket_np(int_strings(values), self.hash_buckets)
        else:
            keys, key_ids = self._sorted_int_keys()
            pos = np.minimum(np.searchsorted(keys, values), max(len(keys) - 1, 0))
            found = keys[pos] == values if len(keys) else np.zeros(len(values), bool)
            ids = np.where(found, key_ids[pos] if len(keys) else 0, -1)
            unseen = np.flatnonzero(~found & ~miss)
            if len(unseen):
                ids[unseen] = self._oov(int_strings(values[unseen]))
        return np.where(miss, 0, ids).astype(np.int32)

    def _py_table(self) -> dict:
        table = self.__dict__.get("_table")
        if table is None:
            table = {v: 1 + self.num_oov + i for i, v in enumerate(self.vocab)}
            table.update({m: 0 for m in self.missing})
            table[None] = 0
            object.__setattr__(self, "_table", table)
        return table

    def _sorted_int_keys(self) -> tuple[np.ndarray, np.ndarray]:
        cached = self.__dict__.get("_sorted")
        if cached is None:
            keys = np.asarray(self.vocab, np.int64)
            order = np.argsort(keys)
            cached = keys[order], (1 + self.num_oov + order).astype(np.int64)
            object.__setattr__(self, "_sorted", cached)
        return cached

    # ---- TensorFlow --------------------------------------------------------------------------
    def make_tf_table(self):
        """The vocabulary as a ``tf.lookup.StaticHashTable`` (None when hashing or empty)."""
        import tensorflow as tf
        if self.hash_buckets is not None or not self.vocab:
            return None
        if self.kind == "str":
            keys = tf.constant([v.encode("utf-8", "surrogateescape") for v in self.vocab],
                               tf.string)
        else:
            keys = tf.constant(self.vocab, tf.int64)
        ids = tf.range(1 + self.num_oov, 1 + self.num_oov + len(self.vocab), dtype=tf.int64)
        return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, ids), -1)

    def ids_tf(self, x, table):
        """TensorFlow twin of :meth:`ids_np` for a string or int64 tensor of any shape."""
        import tensorflow as tf
        miss = tf.zeros_like(x, tf.bool)
        for m in self.missing:
            miss = tf.logical_or(miss, tf.equal(x, m))
        text = x if self.kind == "str" else tf.strings.as_string(x)
        if self.hash_buckets is not None:
            ids = 1 + hash_bucket_tf(text, self.hash_buckets)
        else:
            if self.num_oov <= 1:
                oov = tf.fill(tf.shape(x), tf.constant(self.num_oov, tf.int64))
            else:
                oov = 1 + hash_bucket_tf(text, self.num_oov)
            ids = oov
            if table is not None:
                found = table.lookup(x)
                ids = tf.where(found >= 0, found, oov)
        return tf.cast(tf.where(miss, tf.zeros_like(ids), ids), tf.int32)

    # ---- persistence -------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"kind": self.kind, "missing": list(self.missing), "num_oov": self.num_oov,
                "vocab": None if self.vocab is None else list(self.vocab),
                "hash_buckets": self.hash_buckets}

    @classmethod
    def from_json(cls, what: str, obj: dict) -> "IdMap":
        vocab = obj["vocab"]
        return cls(what=what, kind=obj["kind"], missing=tuple(obj["missing"]),
                   num_oov=int(obj["num_oov"]), vocab=None if vocab is None else tuple(vocab),
                   hash_buckets=obj["hash_buckets"])


def fit_id_map(what: str, kind: str, values, *, missing_values: Sequence[Any], min_count: int,
               num_oov: int, hash_buckets: Optional[int], max_vocab: Optional[int]) -> IdMap:
    """Fits a vocabulary on training values (or sets up hashing, which needs no fitting)."""
    missing = missing_for_kind(missing_values, kind)
    if hash_buckets is not None:
        return IdMap(what, kind, missing, num_oov=0, hash_buckets=int(hash_buckets))
    if kind == "str":
        drop = set(missing)
        counts = collections.Counter(v for v in values if v is not None and v not in drop)
        items = list(counts.items())
    else:
        ints, miss = values
        ints = ints[~(miss | np.isin(ints, np.asarray(missing, np.int64)))]
        uniq, cnt = np.unique(ints, return_counts=True)
        items = list(zip(uniq.tolist(), cnt.tolist()))
    items = sorted((kv for kv in items if kv[1] >= min_count), key=lambda kv: (-kv[1], kv[0]))
    if max_vocab is not None:
        items = items[:max_vocab]
    if 1 + num_oov + len(items) > MAX_BUCKETS:
        raise ValueError(f"{what}: vocabulary of {len(items)} entries does not fit int32 ids")
    return IdMap(what, kind, missing, num_oov=num_oov, vocab=tuple(k for k, _ in items))


def pack_rows(flat_ids: np.ndarray, lengths: np.ndarray, max_len: int,
              keep: str = "first") -> tuple[np.ndarray, np.ndarray]:
    """Ragged ids (flat + row lengths) -> ``(ids [rows, max_len] int32, mask bool)``.

    Ids equal to 0 (missing) are dropped first; rows are then cut to their first (``keep=
    "first"``) or last (``"last"``) ``max_len`` ids and left-aligned, padded with 0.
    """
    n = len(lengths)
    rows = np.repeat(np.arange(n), lengths)
    kept = flat_ids > 0
    rows, vals = rows[kept], flat_ids[kept]
    counts = np.bincount(rows, minlength=n)
    pos = np.arange(len(vals)) - (np.cumsum(counts) - counts)[rows]
    if keep == "last":
        pos = pos - np.maximum(counts - max_len, 0)[rows]
    sel = (pos >= 0) & (pos < max_len)
    out = np.zeros((n, max_len), np.int32)
    out[rows[sel], pos[sel]] = vals[sel]
    return out, out > 0
