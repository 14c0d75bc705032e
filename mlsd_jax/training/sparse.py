"""Sparse embedding updates: gradients per looked-up row, applied to the table with scatters.

With ``optim.embedding.sparse=true`` an embedding table's gradient is never materialised as a
dense ``[rows, features]`` array (as ``jax.grad`` of a gather would): each
:class:`~mlsd_jax.models.embedding.Embedding` lookup records its ids (collection ``LOOKUPS``) and
reads its rows through a zero perturbation (collection ``ROWS``), the step differentiates with
respect to the non-table params and those perturbations, and the optimizer updates only the
rows that were looked up (duplicates summed first, as the dense gradient would sum them):

* ``rowwise_adagrad``: ``acc[r] += mean_j g[r, j]**2``; ``table[r] -= lr * g[r] / (sqrt(acc[r]) + eps)``
  (identical to the dense row-wise Adagrad, whose untouched rows do not move either);
* ``sgd``: ``table[r] -= lr * g[r]``.

The cost per step is ``O(looked-up ids x features)`` however large the table: the
DLRM / TorchRec fused sparse optimizer, in plain JAX. Global-norm clipping covers the dense and
row gradients together; a non-finite step moves nothing.

Limitation: a table must be read only through ``Embedding.__call__`` in training (a model that
also reads it densely, e.g. a full softmax over an item table, should keep ``sparse=false``).
Every table the optimizer treats as an embedding must be looked up at least once per step, or
the step raises (its gradient would otherwise be silently lost).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

SPARSE_OPTIMIZERS = ("rowwise_adagrad", "sgd")

Path = tuple[str, ...]


def table_paths(params, pattern: str = "embedding") -> tuple[Path, ...]:
    """Param paths (``("item", "embedding")``) whose own name full-matches ``pattern``."""
    rx = re.compile(pattern)
    flat = traverse_util.flatten_dict(_plain(params))
    return tuple(sorted(p for p in flat if rx.fullmatch(str(p[-1]))))


def _plain(tree):
    return dict(tree) if isinstance(tree, Mapping) else tree


def split_params(params, paths) -> tuple[Any, dict[Path, Any]]:
    """``(rest, tables)``: ``rest`` is ``params`` with tables set to ``None`` (no leaves)."""
    flat = traverse_util.flatten_dict(_plain(params))
    tables = {p: flat[p] for p in paths}
    rest = traverse_util.unflatten_dict({p: (None if p in tables else v) for p, v in flat.items()})
    return rest, tables


def merge_params(rest, tables: Mapping[Path, Any]):
    flat = traverse_util.flatten_dict(rest, keep_empty_nodes=False)
    flat = {p: v for p, v in flat.items() if v is not None}
    flat.update(tables)
    return traverse_util.unflatten_dict(flat)


def init_row_state(params, paths, name: str, initial: float = 0.0):
    """Per-table optimizer state: one float32 accumulator per row for row-wise Adagrad.

    Boxed (logically partitioned) tables give boxed accumulators named like the rows, so the
    state shards with the table.
    """
    if name != "rowwise_adagrad":
        return {}
    flat = traverse_util.flatten_dict(_plain(params))

    def acc(p):
        if isinstance(p, nn.LogicallyPartitioned):
            return p.replace(value=acc(p.value), names=p.names[:1])
        return jnp.full(p.shape[:1], initial, jnp.float32)

    return traverse_util.unflatten_dict({path: acc(flat[path]) for path in paths})


def row_gradients(lookups, row_grads, paths) -> dict[Path, tuple[jax.Array, jax.Array]]:
    """Pairs each lookup's ids with its row gradients and groups them by table.

    ``lookups[i]`` / ``row_grads[i]`` are what ``apply`` call ``i`` recorded (``{module...:
    {"ids": (ids_0, ids_1, ...)}}``) and the gradients of its perturbations (``{module...:
    {"rows0": g_0, ...}}``). Returns ``{table_path: (ids [N], grads [N, D])}``.
    """
    pieces: dict[Path, list] = {p: [] for p in paths}
    for recorded, grads in zip(lookups, row_grads):
        flat_ids = traverse_util.flatten_dict(_plain(recorded))
        flat_g = traverse_util.flatten_dict(_plain(grads))
        for key, calls in flat_ids.items():
            module = key[:-1]
            table = module + ("embedding",)
            if table not in pieces:
                raise ValueError(f"sparse embedding update: lookup in {'/'.join(module)} has no "
                                 f"table among the optimizer's embedding params "
                                 f"{['/'.join(p) for p in paths]}; check optim.embedding.params")
            for k, ids in enumerate(calls):
                g = flat_g[module + (f"rows{k}",)]
                pieces[table].append((ids.reshape(-1), g.reshape(-1, g.shape[-1])))
    unused = [p for p, v in pieces.items() if not v]
    if unused:
        raise ValueError(
            f"optim.embedding.sparse=true: tables {['/'.join(p) for p in unused]} were not looked "
            f"up through mlsd_jax.models.Embedding in the training forward, so their gradients "
            f"would be lost. Read them through Embedding, narrow optim.embedding.params, or set "
            f"optim.embedding.sparse=false.")
    return {p: (jnp.concatenate([i for i, _ in v]), jnp.concatenate([g for _, g in v]))
            for p, v in pieces.items()}


def dedupe(ids: jax.Array, grads: jax.Array, rows: int) -> tuple[jax.Array, jax.Array]:
    """Sums the gradients of repeated ids: ``(unique ids padded with rows, summed grads)``."""
    n = ids.shape[0]
    uids, inverse = jnp.unique(ids, size=n, fill_value=rows, return_inverse=True)
    summed = jax.ops.segment_sum(grads, inverse.reshape(-1), num_segments=n)
    return uids, summed


def sum_of_squares(row_grads: Mapping[Path, tuple[jax.Array, jax.Array]]) -> jax.Array:
    """Squared global norm of the (deduplicated) row gradients."""
    return sum((jnp.sum(jnp.square(g.astype(jnp.float32))) for _, g in row_grads.values()),
               jnp.zeros((), jnp.float32))


def apply_rows(tables, row_state, row_grads, lr, *, name: str, eps: float = 1e-8):
    """Updates only the looked-up rows of each table; returns ``(tables, row_state)``.

    ``row_grads`` must be deduplicated (:func:`dedupe`); padding ids (``>= rows``) are dropped.
    """
    new_tables = dict(tables)
    flat_state = traverse_util.flatten_dict(_plain(row_state)) if row_state else {}
    for path, (uids, g) in row_grads.items():
        table = tables[path]
        g = g.astype(jnp.float32)
        if name == "rowwise_adagrad":
            acc = flat_state[path]
            acc_u = acc.at[uids].get(mode="fill", fill_value=0.0) + jnp.mean(jnp.square(g), -1)
            flat_state[path] = acc.at[uids].set(acc_u, mode="drop")
            step = g / (jnp.sqrt(acc_u) + eps)[:, None]
        elif name == "sgd":
            step = g
        else:
            raise ValueError(f"optim.embedding.name={name!r} has no sparse update; with "
                             f"optim.embedding.sparse=true use one of {list(SPARSE_OPTIMIZERS)}")
        new_tables[path] = table.at[uids].add((-lr * step).astype(table.dtype), mode="drop")
    state = traverse_util.unflatten_dict(flat_state) if flat_state else row_state
    return new_tables, state
