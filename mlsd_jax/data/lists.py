"""grain pipelines for ranking lists: pad to a fixed list size with a ``mask``, a batch at a time.

A query store (anything with ``len()``, ``query(i) -> (features [n, F], labels [n])``,
``list_sizes`` and ``num_features``) is read with random access. The training stream is batched
early: element ``s`` of :func:`train_dataset` is this process's rows of the *global* batch of
step ``s``, gathered for the whole batch at once (one index computation, one numpy gather of the
documents into preallocated ``[B, L, F]`` arrays) instead of padding list by list.

The order is a pure function of ``(seed, step)``, defined here rather than by a library's RNG:

* The training queries form an endless stream of records; record ``r`` belongs to epoch
  ``r // Q`` (``Q`` queries) and is the query at position ``r % Q`` of that epoch's permutation.
  Each epoch has its own seeded permutation (a keyed 64-bit hash of ``(seed, epoch, query)``,
  sorted), so the order changes every epoch.
* Global batch ``s`` is records ``s * B ... s * B + B - 1`` (``B`` = global batch size); it may
  span two epochs. With ``P`` processes, process ``p`` gets rows ``p * B/P ... (p+1) * B/P - 1``
  of it: disjoint slices whose union is the global batch, which is the same for any ``P``.
* A list longer than ``list_size`` keeps the ``list_size`` documents with the smallest hash of
  ``(seed, epoch, query, document)``, in their original order: a uniform subsample without
  replacement, drawn afresh each epoch. Shorter lists are padded (``mask`` False, zeros).

So step ``s`` of any run is ``dataset[s]`` (exact resume), whatever the thread count or the number
of processes. Evaluation lists are never cut: :func:`eval_batches` pads every list of a split to
:func:`eval_list_size` and cuts the split into global batches in query order, the last one padded
with all-masked lists, so every process yields the same number of batches.

:func:`per_record_train_batches` is the previous per-record grain pipeline (``shuffle`` ->
``repeat`` -> ``random_map(pad_list)`` -> ``batch``), kept as the reference that the tests and
``benchmarks/ranking_pipeline.py`` compare with.
"""
from __future__ import annotations

import sys
import threading
from typing import Iterator

import jax
import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_PERMUTE, _SUBSAMPLE = 1, 2  # hash streams


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a bijective 64-bit hash."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(*parts, h=np.uint64(0)) -> np.ndarray:
    """Keyed hash of integer arrays (broadcast together), e.g. ``(seed, stream, epoch, query)``;
    ``h`` continues a hash of earlier parts."""
    with np.errstate(over="ignore"):
        for part in parts:
            if isinstance(part, (int, np.integer)):
                p = np.uint64(int(part) & _MASK64)  # negative seeds wrap
            else:
                p = np.asarray(part, np.int64).astype(np.uint64)
            h = _mix64(h ^ _mix64(p + _GOLDEN))
    return h


def epoch_permutation(num_queries: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training queries in ``epoch``: ``perm[position] = query``."""
    keys = _hash(seed, _PERMUTE, epoch, np.arange(num_queries))
    return np.argsort(keys, kind="stable")


def subsample_keys(seed: int, epoch, query, num_docs: int, *, prefix=None) -> np.ndarray:
    """``[..., num_docs]`` hash keys of documents; a list keeps the ``list_size`` smallest.
    ``prefix`` is ``_hash(seed, _SUBSAMPLE)`` when the caller has it."""
    h = _hash(seed, _SUBSAMPLE) if prefix is None else prefix
    return _hash(np.asarray(epoch)[..., None], np.asarray(query)[..., None],
                 np.arange(num_docs), h=h)


# ----------------------------------------------------------------------------- store access


class _Docs:
    """Vectorised access to a store's documents: base arrays plus per-query row ranges.

    A :class:`~mlsd_jax.data.letor.QueryStore` (or a view on one) is read in place: its
    (memory-mapped) feature and label arrays are gathered from with one index per batch. Any
    other store is read with ``query(i)``, one list at a time, into the same layout.
    """

    def __init__(self, store):
        self.store = store
        self.num_features = int(store.num_features)
        self.sizes = np.asarray(store.list_sizes, np.int64)
        feats = getattr(store, "_features", None)
        offsets = getattr(store, "_offsets", None)
        if feats is not None and offsets is not None and hasattr(store, "_labels"):
            index = getattr(store, "_index", None)
            base = np.arange(len(store)) if index is None else np.asarray(index, np.int64)
            self.features, self.labels = feats, store._labels
            self.starts = np.asarray(offsets, np.int64)[base]
        else:
            self.features = self.labels = self.starts = None

    def gather(self, queries: np.ndarray, docs: np.ndarray, mask: np.ndarray):
        """Features ``[R, L, F]`` and labels ``[R, L]`` of documents ``docs[r, j]`` (positions
        within query ``queries[r]``) where ``mask``; zeros elsewhere."""
        rows, length = docs.shape
        if self.starts is not None:
            # One gather over every slot (padding slots read the list's first row), then zero
            # the padding: cheaper than gathering the real rows and scattering them.
            starts = self.starts[queries][:, None]
            flat = np.where(mask, starts + docs, starts)
            flat = np.minimum(flat, max(len(self.labels) - 1, 0)).reshape(-1)
            features = np.take(self.features, flat, axis=0).reshape(rows, length, self.num_features)
            labels = np.take(self.labels, flat, axis=0).reshape(rows, length)
            features[~mask] = 0.0
            labels[~mask] = 0.0
            return np.asarray(features, np.float32), np.asarray(labels, np.float32)
        out_f = np.zeros((rows, length, self.num_features), np.float32)
        out_l = np.zeros((rows, length), np.float32)
        for r, q in enumerate(queries):  # generic store: one read per list
            f, y = self.store.query(int(q))
            keep = docs[r][mask[r]]
            out_f[r, :keep.size] = np.asarray(f, np.float32)[keep]
            out_l[r, :keep.size] = np.asarray(y, np.float32)[keep]
        return out_f, out_l


def _process(process_index, process_count) -> tuple[int, int]:
    n = jax.process_count() if process_count is None else int(process_count)
    p = jax.process_index() if process_index is None else int(process_index)
    if not 0 <= p < n:
        raise ValueError(f"process_index={p} out of range for {n} processes")
    return p, n


def _local_rows(batch_size: int, process_index, process_count) -> tuple[int, int]:
    """``(first row, rows)`` of this process in a global batch of ``batch_size``."""
    p, n = _process(process_index, process_count)
    if batch_size % n:
        raise ValueError(f"trainer.batch_size={batch_size} must divide over {n} processes")
    local = batch_size // n
    return p * local, local


# ------------------------------------------------------------------------------------ train


class TrainBatcher:
    """Random access to the training batches: ``batcher[s]`` is this process's slice of global
    batch ``s`` (see the module docstring for the order); ``plan(s)`` says which queries and
    documents it holds."""

    def __init__(self, store, *, list_size: int, batch_size: int, seed: int,
                 process_index: int | None = None, process_count: int | None = None):
        if len(store) == 0:
            raise ValueError("the training split has no queries")
        if list_size < 1 or batch_size < 1:
            raise ValueError(f"list_size and batch_size must be >= 1, got {list_size}, "
                             f"{batch_size}")
        self.list_size, self.batch_size, self.seed = int(list_size), int(batch_size), int(seed)
        self.first_row, self.rows = _local_rows(self.batch_size, process_index, process_count)
        self.docs = _Docs(store)
        self.num_queries = len(store)
        self._prefix = _hash(self.seed, _SUBSAMPLE)
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sys.maxsize  # endless; grain reads it by index

    def permutation(self, epoch: int) -> np.ndarray:
        """``perm[position] = query`` for ``epoch`` (the last few are cached; threads share it)."""
        perm = self._perms.get(epoch)
        if perm is None:
            perm = epoch_permutation(self.num_queries, self.seed, epoch)
            with self._lock:
                while len(self._perms) >= 8:
                    self._perms.pop(next(iter(self._perms)))
                self._perms[epoch] = perm
        return perm

    def __getstate__(self):  # picklable for grain worker processes
        return {k: v for k, v in self.__dict__.items() if k not in ("_perms", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _perms={}, _lock=threading.Lock())

    def records(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(queries, epochs)`` of this process's rows of global batch ``step``."""
        if step < 0:
            raise IndexError(f"step {step} < 0")
        r = int(step) * self.batch_size + self.first_row + np.arange(self.rows, dtype=np.int64)
        epochs, pos = np.divmod(r, self.num_queries)
        queries = np.empty_like(pos)
        for e in np.unique(epochs):  # a batch spans at most a few epochs
            sel = epochs == e
            queries[sel] = self.permutation(int(e))[pos[sel]]
        return queries, epochs

    def plan(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(queries [R], docs [R, L], mask [R, L])`` of this process's slice of step ``step``:
        row ``r`` holds documents ``docs[r][mask[r]]`` (positions within query ``queries[r]``,
        increasing)."""
        queries, epochs = self.records(step)
        L = self.list_size
        sizes = self.docs.sizes[queries]
        docs = np.broadcast_to(np.arange(L, dtype=np.int64), (self.rows, L)).copy()
        mask = docs < sizes[:, None]
        long = np.flatnonzero(sizes > L)
        if long.size:
            n_max = int(sizes[long].max())
            keys = subsample_keys(self.seed, epochs[long], queries[long], n_max,
                                  prefix=self._prefix)
            keys[np.arange(n_max) >= sizes[long][:, None]] = np.uint64(_MASK64)  # beyond the list
            keep = np.argpartition(keys, L - 1, axis=1)[:, :L]  # n_max > L
            docs[long] = np.sort(keep, axis=1)
        return queries, docs, mask

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        queries, docs, mask = self.plan(int(step))
        features, labels = self.docs.gather(queries, docs, mask)
        return {"features": features, "label": labels, "mask": mask}


def train_dataset(store, *, list_size: int, batch_size: int, seed: int,
                  process_index: int | None = None, process_count: int | None = None):
    """grain ``MapDataset`` (endless) whose element ``s`` is this process's slice of the global
    training batch of step ``s``."""
    import grain

    batcher = TrainBatcher(store, list_size=list_size, batch_size=batch_size, seed=seed,
                           process_index=process_index, process_count=process_count)
    return grain.MapDataset.range(sys.maxsize).map(batcher.__getitem__)


def train_batches(store, *, list_size: int, batch_size: int, seed: int, start_step: int = 0,
                  num_threads: int = 2, prefetch: int = 4,
                  process_index: int | None = None, process_count: int | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Endless stream of training batches for this process, starting at ``start_step``.

    ``batch_size`` is global; each of ``jax.process_count()`` processes yields its
    ``batch_size / process_count`` rows of each global batch (disjoint slices).
    """
    import grain

    ds = train_dataset(store, list_size=list_size, batch_size=batch_size, seed=seed,
                       process_index=process_index, process_count=process_count)
    ds = ds.slice(slice(int(start_step), None))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                     prefetch_buffer_size=prefetch)))


# ------------------------------------------------------------------------------------- eval


def eval_list_size(store, multiple: int = 16) -> int:
    """Smallest multiple of ``multiple`` that holds the longest list: no list is ever cut."""
    longest = int(np.max(store.list_sizes)) if len(store) else 1
    return -(-longest // multiple) * multiple


def eval_batches(store, *, batch_size: int, list_size: int | None = None,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
    """One pass over every query of the split in order, full lists.

    Global batch ``b`` holds queries ``b * batch_size ...`` (the last padded with all-masked
    lists, which metrics ignore); each process yields its ``batch_size / process_count`` rows of
    every global batch, so all processes yield the same number of batches and the evaluation
    step compiles once per split.
    """
    list_size = list_size or eval_list_size(store)
    first, local = _local_rows(batch_size, process_index, process_count)
    docs = _Docs(store)
    if len(store) and int(docs.sizes.max()) > list_size:
        raise ValueError(f"a list of {int(docs.sizes.max())} items does not fit "
                         f"list_size={list_size}")
    slots = np.arange(list_size, dtype=np.int64)
    n_batches = -(-len(store) // batch_size)
    for b in range(n_batches):
        idx = b * batch_size + first + np.arange(local, dtype=np.int64)
        real = idx < len(store)
        queries = np.where(real, idx, 0)
        mask = (slots < docs.sizes[queries][:, None]) & real[:, None]
        features, labels = docs.gather(queries, np.broadcast_to(slots, mask.shape), mask)
        yield {"features": features, "label": labels, "mask": mask}


# ------------------------------------------------------------------------- per-record path


class QuerySource:
    """grain random-access source over the queries of a store (one record = one list)."""

    def __init__(self, store):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int):
        features, labels = self.store.query(int(index))
        return np.asarray(features, np.float32), np.asarray(labels, np.float32)


def pad_list(features: np.ndarray, labels: np.ndarray, list_size: int,
             rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Pads (or, with ``rng``, randomly subsamples) one list to ``list_size`` items."""
    n = len(labels)
    if n > list_size:
        if rng is None:
            raise ValueError(f"a list of {n} items does not fit list_size={list_size}")
        keep = np.sort(rng.choice(n, list_size, replace=False))
        features, labels, n = features[keep], labels[keep], list_size
    out_f = np.zeros((list_size, features.shape[-1]), np.float32)
    out_l = np.zeros((list_size,), np.float32)
    mask = np.zeros((list_size,), bool)
    out_f[:n], out_l[:n], mask[:n] = features, labels, True
    return {"features": out_f, "label": out_l, "mask": mask}


def per_record_train_batches(store, *, list_size: int, batch_size: int, seed: int,
                             start_step: int = 0, num_threads: int = 2, prefetch: int = 4
                             ) -> Iterator[dict[str, np.ndarray]]:
    """The per-record pipeline (one ``pad_list`` per list, then ``batch``), single process.

    Same rules as :func:`train_batches` (seeded shuffle per epoch, long lists subsampled afresh
    each epoch, indexed by step) with grain's own shuffle and per-record RNG, so a different
    order. Reference for tests and benchmarks; training uses :func:`train_batches`.
    """
    import grain

    ds = grain.MapDataset.source(QuerySource(store))
    if len(ds) == 0:
        raise ValueError("the training split has no queries")
    ds = (ds.shuffle(seed=seed).repeat(None)
          .random_map(lambda x, rng: pad_list(*x, list_size, rng), seed=seed)
          .batch(batch_size, drop_remainder=True))
    ds = ds.slice(slice(start_step, None))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                     prefetch_buffer_size=prefetch)))
