"""CTR models over one shared field-embedding front-end: LR, FM, DeepFM, Wide & Deep, DCN-v2.

Inputs are the dict a fitted :class:`~mlsd_jax.features.FeatureSpec` produces (after
``apply``): integer arrays named in ``cardinalities`` are id fields (a
``<field>/mask`` beside ``[batch, L]`` ids marks a multi-valued field, mean-pooled over its
valid items), floating arrays are numeric fields (a standardised number, a missing indicator, a
piecewise-linear encoding...). :class:`FieldEmbedding` turns them into

* ``vectors [batch, F, D]``: one ``D``-vector per field, an id's embedding or, for a number
  ``x``, ``x @ V_f`` (``v_f * x`` for a scalar, as DeepFM embeds dense features), and
* ``linear [batch]``: the first-order term ``b + sum_f w_f(x_f)``, a 1-wide embedding per id
  field plus a linear map of the numbers, and
* ``l2 [batch]``: the squared norm of the id embeddings each row read, for an L2 penalty on
  the embedding rows a batch uses (``task.embedding_l2``; DeepCTR's ``l2_reg_embedding``).

The id fields' embeddings live in one :class:`~mlsd_jax.models.embedding.StackedEmbedding`
table (``features/embed/embedding``; the 1-wide first-order weights in another,
``features/linear/embedding``): each field has its own rows and OOV row for unseen ids at a row
offset, the fields are read with one gather (one more per length of multi-valued field), the
table is row-sharded over the ``model`` mesh axis and gets row-wise Adagrad or sparse row
updates when configured. MLPs come from
:mod:`mlsd_jax.models.layers`. Each model returns a logit ``[batch]`` (and, asked with
``with_l2=True``, the ``l2`` term beside it).
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlsd_jax.models.embedding import StackedEmbedding
from mlsd_jax.models.layers import MLP, Dense, dense

__all__ = ["Fields", "FieldEmbedding", "fm_interaction", "CrossNetwork", "LogisticRegression",
           "FactorizationMachine", "DeepFM", "WideDeep", "DCNv2"]


def numeric_fields(cardinalities: Mapping[str, int], inputs: Mapping[str, jnp.ndarray]
                   ) -> list[str]:
    """Keys of the numeric fields: floating inputs that are neither ids nor masks, sorted."""
    return sorted(k for k, v in inputs.items()
                  if k not in cardinalities and jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating))


def _param_name(key: str) -> str:
    return key.replace("/", "_")


class Fields(NamedTuple):
    """What :class:`FieldEmbedding` gives the models.

    ``vectors [B, F, D]`` (``None`` without ``embed_dim``), ``linear [B]`` (first-order term)
    and ``l2 [B]``: each row's sum of squared id embeddings it read (pooled for multi-valued
    fields; the 1-wide linear weights included), for an L2 penalty on the rows a batch uses.
    """

    vectors: jnp.ndarray | None
    linear: jnp.ndarray
    l2: jnp.ndarray


class FieldEmbedding(nn.Module):
    """Inputs -> :class:`Fields`: ``(vectors [B, F, D], linear [B], l2 [B])``.

    Field order: id fields in ``cardinalities`` order, then numeric fields by name.
    ``linear=False`` skips the first-order part (``linear`` is then zeros).

    ``linear_scale``: the first-order weights (bias, 1-wide tables, numeric weights) are stored
    divided by it. Adam moves every parameter by about the learning rate per step whatever its
    scale, so the first-order part then learns ``linear_scale`` times faster than the field
    embeddings. With both at one pace, the zero-initialised first-order weights lag and the
    pairwise / deep part absorbs first-order effects such as an item's appeal, which
    generalises worse to the cold users of a time-ordered split (MovieLens-100k clicks, valid
    AUC: FM 0.696 -> 0.716, Wide & Deep 0.733 -> 0.736 with 10).

    ``id_dropout={field: p}`` (training only) replaces each id of ``field`` by ``oov_id`` with
    probability ``p``: the rows a cold user or item reads at serving time (a vocabulary gives
    unseen values id 1) are then trained, and the other fields learn to predict without the
    id. A cold-start simulation; off by default (on MovieLens it moved validation AUC by less
    than 0.005 and lowered test AUC).
    """

    cardinalities: Mapping[str, int]
    embed_dim: int | None = 16
    dropout: float = 0.0
    id_dropout: Mapping[str, float] | None = None
    oov_id: int = 1
    linear_scale: float = 1.0
    linear: bool = True

    def _drop_ids(self, ids: dict, train: bool) -> dict:
        rates = dict(self.id_dropout or {})
        unknown = sorted(set(rates) - set(self.cardinalities))
        if unknown:
            raise ValueError(f"id_dropout names fields {unknown} that are not id fields; id "
                             f"fields: {list(self.cardinalities)}")
        if not train:
            return ids
        out = dict(ids)
        for k, p in rates.items():
            if p > 0:
                drop = jax.random.bernoulli(self.make_rng("dropout"), p, ids[k].shape)
                out[k] = jnp.where(drop & (ids[k] > 0), self.oov_id, ids[k])
        return out

    @nn.compact
    def __call__(self, inputs: Mapping[str, jnp.ndarray], *, train: bool = False):
        ids = self._drop_ids({k: inputs[k] for k in self.cardinalities}, train)
        masks = {k: inputs[f"{k}/mask"] for k in self.cardinalities if f"{k}/mask" in inputs}
        nums = {k: jnp.reshape(inputs[k], (inputs[k].shape[0], -1)).astype(jnp.float32)
                for k in numeric_fields(self.cardinalities, inputs)}
        batch = next(iter(inputs.values())).shape[0]
        linear = jnp.zeros((batch,), jnp.float32)
        l2 = jnp.zeros((batch,), jnp.float32)
        if self.linear:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                   (None,)), (1,))
            linear = linear + self.linear_scale * bias
            if ids:
                wide = StackedEmbedding(dict(self.cardinalities), 1, name="linear",
                                        embedding_init=nn.initializers.zeros)(ids, masks)
                wide = {k: self.linear_scale * v[..., 0] for k, v in wide.items()}
                linear = linear + sum(wide[k] for k in self.cardinalities)
                l2 = l2 + sum(jnp.square(wide[k]) for k in self.cardinalities)
            if nums:
                x = jnp.concatenate([nums[k] for k in sorted(nums)], axis=-1)
                zeros = nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                     ("features", "embed"))
                linear = linear + self.linear_scale * Dense(
                    1, use_bias=False, kernel_init=zeros, name="linear_numeric")(x)[..., 0]
        if self.embed_dim is None:
            return Fields(None, linear, l2)
        fields = []
        if ids:
            emb = StackedEmbedding(dict(self.cardinalities), self.embed_dim,
                                   name="embed")(ids, masks)
            fields += [emb[k] for k in self.cardinalities]
            l2 = l2 + sum(jnp.sum(jnp.square(emb[k]), axis=-1) for k in self.cardinalities)
        for k in sorted(nums):
            fields.append(dense(self.embed_dim, "features", "embed", use_bias=False,
                                name=f"numeric_{_param_name(k)}")(nums[k]))
        if not fields:
            raise ValueError("FieldEmbedding: no id or numeric field in the inputs "
                             f"(keys {sorted(inputs)}; cardinalities {sorted(self.cardinalities)})")
        fields = jnp.stack(fields, axis=-2)
        if self.dropout:
            fields = nn.Dropout(self.dropout, deterministic=not train)(fields)
        return Fields(fields, linear, l2)


def fm_interaction(fields: jnp.ndarray) -> jnp.ndarray:
    """FM's pairwise term ``sum_{i<j} <e_i, e_j>`` of ``fields [..., F, D]`` in O(F D):
    ``0.5 * sum_d ((sum_f e_fd)^2 - sum_f e_fd^2)`` (Rendle 2010)."""
    total = jnp.sum(fields, axis=-2)
    return 0.5 * jnp.sum(total * total - jnp.sum(fields * fields, axis=-2), axis=-1)


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers (Wang et al. 2021): ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``.

    ``low_rank=r`` factorises ``W_l = U_l V_l^T`` (the paper's DCN-Mix without experts: ``r``
    columns instead of ``K``), cheaper for wide inputs.
    """

    num_layers: int = 3
    low_rank: int | None = None

    @nn.compact
    def __call__(self, x0: jnp.ndarray) -> jnp.ndarray:
        width = x0.shape[-1]
        x = x0
        for i in range(self.num_layers):
            h = x
            if self.low_rank:
                h = dense(self.low_rank, "embed", "mlp", use_bias=False, name=f"down_{i}")(h)
                h = dense(width, "mlp", "embed", name=f"up_{i}")(h)
            else:
                h = dense(width, "embed", "embed", name=f"cross_{i}")(h)
            x = x0 * h + x
        return x


def _flat(fields: jnp.ndarray) -> jnp.ndarray:
    return jnp.reshape(fields, fields.shape[:-2] + (-1,))


def _result(logit, fields: Fields, with_l2: bool):
    return (logit, fields.l2) if with_l2 else logit


class LogisticRegression(nn.Module):
    """``b + sum_f w_f(x_f)``: one weight per id (a 1-wide embedding) and per number.

    Every model's ``__call__(inputs, *, train=False, with_l2=False)`` returns the logit
    ``[batch]``, or ``(logit, l2 [batch])`` with ``with_l2`` (see :class:`Fields`).
    """

    cardinalities: Mapping[str, int]
    id_dropout: Mapping[str, float] | None = None
    linear_scale: float = 1.0

    @nn.compact
    def __call__(self, inputs: Mapping[str, jnp.ndarray], *, train: bool = False,
                 with_l2: bool = False):
        f = FieldEmbedding(self.cardinalities, None, id_dropout=self.id_dropout,
                           linear_scale=self.linear_scale, name="features")(inputs, train=train)
        return _result(f.linear, f, with_l2)


class FactorizationMachine(nn.Module):
    """Logistic regression plus all pairwise field interactions ``<v_i, v_j>`` (Rendle 2010)."""

    cardinalities: Mapping[str, int]
    embed_dim: int = 16
    embedding_dropout: float = 0.0
    id_dropout: Mapping[str, float] | None = None
    linear_scale: float = 1.0

    @nn.compact
    def __call__(self, inputs: Mapping[str, jnp.ndarray], *, train: bool = False,
                 with_l2: bool = False):
        f = FieldEmbedding(self.cardinalities, self.embed_dim, self.embedding_dropout,
                           self.id_dropout, linear_scale=self.linear_scale,
                           name="features")(inputs, train=train)
        return _result(f.linear + fm_interaction(f.vectors), f, with_l2)


class DeepFM(nn.Module):
    """FM (first order + pairwise) plus an MLP over the same field embeddings (Guo et al. 2017)."""

    cardinalities: Mapping[str, int]
    embed_dim: int = 16
    hidden: Sequence[int] = (256, 128)
    dropout: float = 0.1
    embedding_dropout: float = 0.0
    id_dropout: Mapping[str, float] | None = None
    linear_scale: float = 1.0
    layer_norm: bool = False

    @nn.compact
    def __call__(self, inputs: Mapping[str, jnp.ndarray], *, train: bool = False,
                 with_l2: bool = False):
        f = FieldEmbedding(self.cardinalities, self.embed_dim, self.embedding_dropout,
                           self.id_dropout, linear_scale=self.linear_scale,
                           name="features")(inputs, train=train)
        deep = MLP(self.hidden, out_features=1, dropout=self.dropout, layer_norm=self.layer_norm,
                   name="deep")(_flat(f.vectors), train=train)
        return _result(f.linear + fm_interaction(f.vectors) + deep[..., 0], f, with_l2)


class WideDeep(nn.Module):
    """A wide linear part plus an MLP over the field embeddings (Cheng et al. 2016)."""

    cardinalities: Mapping[str, int]
    embed_dim: int = 16
    hidden: Sequence[int] = (256, 128)
    dropout: float = 0.1
    embedding_dropout: float = 0.0
    id_dropout: Mapping[str, float] | None = None
    linear_scale: float = 1.0
    layer_norm: bool = False

    @nn.compact
    def __call__(self, inputs: Mapping[str, jnp.ndarray], *, train: bool = False,
                 with_l2: bool = False):
        f = FieldEmbedding(self.cardinalities, self.embed_dim, self.embedding_dropout,
                           self.id_dropout, linear_scale=self.linear_scale,
                           name="features")(inputs, train=train)
        deep = MLP(self.hidden, out_features=1, dropout=self.dropout, layer_norm=self.layer_norm,
                   name="deep")(_flat(f.vectors), train=train)
        return _result(f.linear + deep[..., 0], f, with_l2)


class DCNv2(nn.Module):
    """DCN-v2 (Wang et al. 2021): cross layers over the concatenated field embeddings, with a
    deep network stacked on top (``structure="stacked"``) or beside them (``"parallel"``)."""

    cardinalities: Mapping[str, int]
    embed_dim: int = 16
    num_cross: int = 3
    low_rank: int | None = None
    hidden: Sequence[int] = (256, 128)
    structure: str = "stacked"
    dropout: float = 0.1
    embedding_dropout: float = 0.0
    id_dropout: Mapping[str, float] | None = None
    layer_norm: bool = False

    @nn.compact
    def __call__(self, inputs: Mapping[str, jnp.ndarray], *, train: bool = False,
                 with_l2: bool = False):
        if self.structure not in ("stacked", "parallel"):
            raise ValueError(f"DCNv2.structure={self.structure!r}; expected 'stacked' or "
                             "'parallel'")
        f = FieldEmbedding(self.cardinalities, self.embed_dim, self.embedding_dropout,
                           self.id_dropout, linear=False, name="features")(inputs, train=train)
        x0 = _flat(f.vectors)
        cross = CrossNetwork(self.num_cross, self.low_rank, name="cross")(x0)
        mlp = MLP(self.hidden, dropout=self.dropout, layer_norm=self.layer_norm, name="deep")
        if self.structure == "stacked":
            h = mlp(cross, train=train)
        else:
            h = jnp.concatenate([cross, mlp(x0, train=train)], axis=-1)
        return _result(dense(1, "embed", "embed", name="head")(h)[..., 0], f, with_l2)
