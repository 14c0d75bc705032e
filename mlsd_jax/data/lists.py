"""grain pipelines for ranking lists: pad to a fixed list size with a ``mask``.

A query store (anything with ``len()``, ``query(i) -> (features [n, F], labels [n])`` and
``list_sizes``) is read with random access, so an epoch order is a seeded permutation and a
resumed run starts from any step without replaying the stream. Training lists longer than
``list_size`` are subsampled afresh each epoch (seeded); evaluation lists are never cut.
"""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np


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


def train_batches(store, *, list_size: int, batch_size: int, seed: int, start_step: int = 0,
                  num_threads: int = 2, prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
    """Infinite stream of training batches for this process, starting at ``start_step``.

    ``batch_size`` is global; each of ``jax.process_count()`` processes reads a disjoint slice
    of the queries and yields ``batch_size / process_count`` lists per step.
    """
    import grain  # only the training stream needs it; padding helpers stay dependency-free

    n_proc, proc = jax.process_count(), jax.process_index()
    if batch_size % n_proc:
        raise ValueError(f"trainer.batch_size={batch_size} must divide over {n_proc} processes")
    ds = grain.MapDataset.source(QuerySource(store))
    if n_proc > 1:
        ds = ds[proc::n_proc]
    if len(ds) == 0:
        raise ValueError("the training split has no queries")
    ds = (ds.shuffle(seed=seed).repeat(None)
          .random_map(lambda x, rng: pad_list(*x, list_size, rng), seed=seed)
          .batch(batch_size // n_proc, drop_remainder=True))
    ds = ds.slice(slice(start_step, None))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                     prefetch_buffer_size=prefetch)))


def eval_list_size(store, multiple: int = 16) -> int:
    """Smallest multiple of ``multiple`` that holds the longest list: no list is ever cut."""
    longest = int(np.max(store.list_sizes)) if len(store) else 1
    return -(-longest // multiple) * multiple


def eval_batches(store, *, batch_size: int, list_size: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
    """One pass over every query of this process's slice, in order, full lists.

    Every batch has ``batch_size / process_count`` lists (the last is padded with all-masked
    lists, which metrics ignore), so the evaluation step compiles once per split.
    """
    list_size = list_size or eval_list_size(store)
    n_proc, proc = jax.process_count(), jax.process_index()
    local = batch_size // n_proc
    indices = np.arange(len(store))[proc::n_proc]
    n_batches = -(-len(store) // batch_size)  # same count on every process
    empty = pad_list(np.zeros((0, store.num_features), np.float32), np.zeros(0, np.float32),
                     list_size)
    for b in range(n_batches):
        rows = [pad_list(*store.query(int(i)), list_size) for i in indices[b * local:(b + 1) * local]]
        rows += [empty] * (local - len(rows))  # all-masked lists: metrics ignore them
        yield {k: np.stack([r[k] for r in rows]) for k in empty}
