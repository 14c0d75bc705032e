"""Embedding tables for categorical features, with logical axis names (see ``mlsd_jax.sharding``).

Each table is a parameter named ``embedding`` of shape ``[rows, features]`` with logical names
``("table_rows", "embed")``: under the default rules its rows shard over the ``model`` mesh axis,
so a large table is split across devices instead of copied to each one. The optimizer finds
tables by that parameter name (``optim.embedding.params``) to skip weight decay on them and to
give them their own optimizer (e.g. row-wise Adagrad).

Out-of-vocabulary ids: a table for ``num_embeddings`` ids has one extra *OOV row* at index
``num_embeddings``; every id outside ``[0, num_embeddings)`` (negative, too large, padding
sentinels such as ``-1``) is looked up there. Lookups never fail inside ``jit`` and never read
out of bounds. The row count is then rounded up to a multiple of ``row_multiple`` so the rows
divide evenly over the devices of the ``model`` axis; those padding rows are never addressed.

Sparse training (``optim.embedding.sparse=true``): the trainer makes the :data:`LOOKUPS`
collection mutable; each lookup then records its (OOV-mapped) ids there and reads its rows
through a zero perturbation in :data:`ROWS`, so the gradient comes back as one ``[ids, features]``
block per lookup instead of a dense ``[rows, features]`` table (see
:mod:`mlsd_jax.training.sparse`). Tables must then be read only through ``__call__``.

Many fields, one table: :class:`StackedEmbedding` keeps every field's rows (each with its own
OOV row and rounding) in one ``embedding`` parameter at per-field row offsets, as TorchRec's
``EmbeddingBagCollection`` and DLRM do, so fields with ids of one shape are read with one gather
and their gradient is one scatter instead of one per field. It gives the same vectors as :class:`MultiEmbedding`
with the same rows.
"""
from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

TABLE_AXES = ("table_rows", "embed")
COMBINERS = ("mean", "sum", "sqrtn")
LOOKUPS = "embedding_lookups"  # ids of each lookup, recorded in sparse training
ROWS = "embedding_rows"        # zero perturbations of the looked-up rows (their gradients)


def table_rows(num_embeddings: int, row_multiple: int = 8) -> int:
    """Rows of the table for ``num_embeddings`` ids: one OOV row, rounded up to ``row_multiple``."""
    rows = num_embeddings + 1
    return -(-rows // row_multiple) * row_multiple


def masked_pool(x: jax.Array, mask: jax.Array, combiner: str = "mean") -> jax.Array:
    """Pools ``x [..., L, D]`` over ``L`` where ``mask [..., L]`` is true.

    ``mean`` divides by the number of valid items, ``sqrtn`` by its square root, ``sum`` not at
    all. A row with no valid item gives zeros (values and gradients are finite).
    """
    if combiner not in COMBINERS:
        raise ValueError(f"combiner={combiner!r}; valid choices: {list(COMBINERS)}")
    if mask.shape != x.shape[:-1]:
        raise ValueError(f"mask shape {mask.shape} must equal the ids shape {x.shape[:-1]}")
    weights = mask.astype(x.dtype)
    total = jnp.einsum("...l,...ld->...d", weights, x)
    if combiner == "sum":
        return total
    count = jnp.maximum(weights.sum(-1, keepdims=True), 1.0)
    return total / (count if combiner == "mean" else jnp.sqrt(count))


def read_rows(module: nn.Module, table: jax.Array, ids: jax.Array) -> jax.Array:
    """``table[ids]`` for ids already in ``[0, rows)``, read by ``module`` (the owner of the
    ``embedding`` parameter): in sparse training (``LOOKUPS`` mutable) the ids are recorded and
    the rows read through a zero perturbation in ``ROWS``, so their gradient comes back per id."""
    if module.is_mutable_collection(LOOKUPS) and not module.is_initializing():
        module.sow(LOOKUPS, "ids", ids)
        k = len(module.get_variable(LOOKUPS, "ids")) - 1
        out = jax.lax.stop_gradient(table).at[ids].get(mode="promise_in_bounds")
        return module.perturb(f"rows{k}", out, collection=ROWS)
    return jnp.asarray(table).at[ids].get(mode="promise_in_bounds")  # ids are in range: no mask


class Embedding(nn.Module):
    """Lookup table for ids in ``[0, num_embeddings)``; other ids read the OOV row.

    ``__call__(ids)`` maps int ids of any shape ``[...]`` to ``[..., features]``. With ``mask``
    (same shape as ``ids``), the last axis is a multi-valued field and is pooled with
    ``combiner``: ``[..., L]`` ids -> ``[..., features]``.
    """

    num_embeddings: int
    features: int
    row_multiple: int = 8
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    embedding_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.05)

    @nn.compact
    def __call__(self, ids, mask=None, *, combiner: str = "mean"):
        if self.num_embeddings < 1 or self.features < 1 or self.row_multiple < 1:
            raise ValueError(
                f"Embedding needs num_embeddings >= 1, features >= 1 and row_multiple >= 1; got "
                f"{self.num_embeddings}, {self.features}, {self.row_multiple}")
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"Embedding ids must be integers, got dtype {ids.dtype}")
        rows = table_rows(self.num_embeddings, self.row_multiple)
        init = nn.with_logical_partitioning(self.embedding_init, TABLE_AXES)
        table = self.param("embedding", init, (rows, self.features), self.param_dtype)
        valid = (ids >= 0) & (ids < self.num_embeddings)
        ids = jnp.where(valid, ids, self.num_embeddings)  # the OOV row
        out = read_rows(self, table, ids)
        if self.dtype is not None:
            out = out.astype(self.dtype)
        return out if mask is None else masked_pool(out, jnp.asarray(mask), combiner)


def _check_fields(owner: str, cardinalities: Mapping[str, int], ids: Mapping,
                  masks: Mapping | None) -> tuple[list[str], dict]:
    """``(fields in order, masks)`` after checking that ``ids`` names exactly the fields of
    ``cardinalities`` and ``masks`` no other field."""
    if not cardinalities:
        raise ValueError(f"{owner}.cardinalities is empty; expected {{field: cardinality}}")
    expected, given = list(cardinalities), set(ids)
    if given != set(expected):
        raise KeyError(f"{owner} got fields {sorted(given)}; expected {expected}")
    masks = dict(masks or {})
    unknown = set(masks) - given
    if unknown:
        raise KeyError(f"masks for unknown fields {sorted(unknown)}; fields: {expected}")
    return expected, masks


def _stacked(out: Mapping[str, jax.Array], fields: list[str]) -> jax.Array:
    """``{field: [..., D]}`` -> ``[..., num_fields, D]`` in field order (``stack=True``)."""
    if len({v.shape for v in out.values()}) != 1:
        raise ValueError("stack=True needs one shared dimension and equal output shapes; got "
                         f"{ {f: v.shape for f, v in out.items()} }")
    return jnp.stack([out[f] for f in fields], axis=-2)


class MultiEmbedding(nn.Module):
    """One :class:`Embedding` per categorical field, built from ``{field: cardinality}``.

    ``features`` is one shared dimension (an int) or ``{field: dim}``. Call with ``{field: ids}``
    (every field, ids of any shape) and optionally ``masks={field: mask}`` for multi-valued
    fields, which are pooled with ``combiner``. Returns ``{field: vectors}``; with ``stack=True``
    (shared dimension and equal id shapes) one array ``[..., num_fields, features]`` in field order.
    Parameter paths are ``<field>/embedding``.
    """

    cardinalities: Mapping[str, int]
    features: int | Mapping[str, int]
    row_multiple: int = 8
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    embedding_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.05)

    def _dims(self) -> dict[str, int]:
        if isinstance(self.features, Mapping):
            missing = [f for f in self.cardinalities if f not in self.features]
            if missing:
                raise ValueError(f"MultiEmbedding.features has no dimension for fields {missing}; "
                                 f"expected an int or a dim for each of {list(self.cardinalities)}")
            return {f: int(self.features[f]) for f in self.cardinalities}
        return {f: int(self.features) for f in self.cardinalities}

    @nn.compact
    def __call__(self, ids: Mapping[str, jax.Array], masks: Mapping[str, jax.Array] | None = None,
                 *, combiner: str = "mean", stack: bool = False):
        expected, masks = _check_fields("MultiEmbedding", self.cardinalities, ids, masks)
        dims = self._dims()
        out = {f: Embedding(int(self.cardinalities[f]), dims[f], self.row_multiple, self.dtype,
                            self.param_dtype, self.embedding_init, name=str(f))(
                                ids[f], masks.get(f), combiner=combiner)
               for f in expected}
        return _stacked(out, expected) if stack else out


def field_offsets(cardinalities: Mapping[str, int], row_multiple: int = 8
                  ) -> tuple[dict[str, int], int]:
    """``({field: first row}, total rows)`` of a :class:`StackedEmbedding`: fields in order, each
    taking :func:`table_rows` rows (its ids, its OOV row, rounding to ``row_multiple``)."""
    offsets, total = {}, 0
    for f, card in cardinalities.items():
        offsets[f] = total
        total += table_rows(int(card), row_multiple)
    return offsets, total


class StackedEmbedding(nn.Module):
    """:class:`MultiEmbedding` with all fields' rows in one table (one shared ``features``).

    Field ``f``'s rows are ``[offset_f, offset_f + table_rows(card_f))`` of one ``embedding``
    parameter (offsets from :func:`field_offsets`): its ids ``[0, card_f)`` first, then its OOV
    row (every other id of ``f``), then its padding rows. The table has the rows of the separate
    tables (same parameter count, row-sharded the same way: ``TABLE_AXES``), and the outputs
    equal :class:`MultiEmbedding`'s with those rows, but the fields whose ids have one shape are
    read with one gather (one scatter-add in the backward pass, one block of rows in sparse
    training) instead of one per field; a multi-valued field of another length adds one read
    per length. Call and outputs as :class:`MultiEmbedding`; parameter path ``embedding``.
    """

    cardinalities: Mapping[str, int]
    features: int
    row_multiple: int = 8
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    embedding_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.05)

    @nn.compact
    def __call__(self, ids: Mapping[str, jax.Array], masks: Mapping[str, jax.Array] | None = None,
                 *, combiner: str = "mean", stack: bool = False):
        expected, masks = _check_fields("StackedEmbedding", self.cardinalities, ids, masks)
        bad = {f: c for f, c in self.cardinalities.items() if int(c) < 1}
        if bad or self.features < 1 or self.row_multiple < 1:
            raise ValueError(f"StackedEmbedding needs cardinalities >= 1, features >= 1 and "
                             f"row_multiple >= 1; got cardinalities {bad or 'ok'}, features "
                             f"{self.features}, row_multiple {self.row_multiple}")
        offsets, rows = field_offsets(self.cardinalities, self.row_multiple)
        init = nn.with_logical_partitioning(self.embedding_init, TABLE_AXES)
        table = self.param("embedding", init, (rows, self.features), self.param_dtype)
        shifted = {}
        for f in expected:
            x = jnp.asarray(ids[f])
            if not jnp.issubdtype(x.dtype, jnp.integer):
                raise TypeError(f"StackedEmbedding ids of field {f!r} must be integers, got "
                                f"dtype {x.dtype}")
            card = int(self.cardinalities[f])
            x = x.astype(jnp.int32)
            shifted[f] = jnp.where((x >= 0) & (x < card), x, card) + offsets[f]  # OOV row of f
        groups: dict[tuple, list[str]] = {}  # fields by id shape (symbolic batch sizes too)
        for f in expected:
            groups.setdefault(tuple(shifted[f].shape), []).append(f)
        out = {}
        for fields in groups.values():  # one read per shape: [..., G] ids -> [..., G, D]
            read = read_rows(self, table, jnp.stack([shifted[f] for f in fields], axis=-1))
            out.update({f: read[..., i, :] for i, f in enumerate(fields)})
        if self.dtype is not None:
            out = {f: v.astype(self.dtype) for f, v in out.items()}
        out = {f: masked_pool(v, jnp.asarray(masks[f]), combiner) if f in masks else v
               for f, v in out.items()}
        return _stacked(out, expected) if stack else out
