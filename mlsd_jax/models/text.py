"""Text classifiers over hashed n-gram bags: TF-IDF weighting in JAX and a linear model on top.

A *bag* is an int32 array ``[batch, L]`` of n-gram ids (0 = padding), in any order and with
repeats, as :class:`~mlsd_jax.features.Text` and the character n-gram encoder of
:mod:`mlsd_jax.tasks.spam` produce. :func:`tfidf_bag` turns one bag into scikit-learn's
``TfidfVectorizer`` weights (term counts, optionally ``1 + log(count)``, times an IDF table
fitted on the training split, L2-normalised per row) without leaving the device: the ids of a
row are sorted, each distinct id keeps one slot holding its weight and repeats get 0.
:class:`TfidfLinear` is logistic regression on those weights (one weight per bucket and bag)
plus a wide linear term over optional tabular side features (ids and numbers from a fitted
:class:`~mlsd_jax.features.FeatureSpec`). :class:`TextCNN` reads the word ids in text order
instead (``input_kind = "ids"``): embeddings, 1-D convolutions of several widths, masked max
pooling, an MLP (Kim, 2014). :class:`BiLSTM` (a bidirectional LSTM, ``flax.linen.RNN`` over
``OptimizedLSTMCell`` with the sequence lengths taken from the padding) and
:class:`TextTransformer` (learned positions and the core
:class:`~mlsd_jax.models.layers.TransformerEncoder` with the padding masked) read the same ids,
pool the non-padding positions and end in the same MLP and side term.
"""
from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlsd_jax.models.conv import conv
from mlsd_jax.models.embedding import Embedding, masked_pool
from mlsd_jax.models.layers import MLP, Dense, TransformerEncoder, layer_norm

__all__ = ["BiLSTM", "TextCNN", "TextTransformer", "TfidfLinear", "fit_idf", "tfidf_bag"]


def fit_idf(ids: np.ndarray, cardinality: int) -> np.ndarray:
    """Smoothed IDF per id (scikit-learn's ``smooth_idf``): ``log((1 + n) / (1 + df)) + 1``.

    ``ids`` ``[docs, L]`` (0 = padding, ignored) are the training split's bags; ``df`` counts
    the documents holding an id at least once. Row 0 (padding) gets 0. float32 ``[cardinality]``.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"fit_idf: ids must be [docs, length], got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= cardinality):
        raise ValueError(f"fit_idf: ids must lie in [0, {cardinality}); got "
                         f"[{ids.min()}, {ids.max()}]")
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])
    flat = ids.reshape(-1).astype(np.int64)
    keep = flat > 0
    pairs = np.unique(rows[keep] * np.int64(cardinality) + flat[keep])
    df = np.bincount(pairs % cardinality, minlength=cardinality)
    n = len(ids)
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    idf[0] = 0.0
    return idf.astype(np.float32)


def tfidf_bag(ids: jax.Array, idf: jax.Array, *, sublinear_tf: bool = True):
    """One bag ``[B, L]`` -> ``(ids [B, L], weights [B, L])``: each distinct id of a row once
    with its L2-normalised TF-IDF weight, every other slot 0 (padding rows give all zeros).

    The weight of id ``t`` in a row is ``tf(t) * idf[t] / ||.||_2`` with ``tf`` the count of
    ``t`` in the row (``1 + log(count)`` with ``sublinear_tf``).
    """
    s = jnp.sort(ids.astype(jnp.int32), axis=-1)
    valid = s > 0
    prev = jnp.concatenate([jnp.full(s[:, :1].shape, -1, s.dtype), s[:, :-1]], axis=-1)
    first = valid & (s != prev)
    count = jax.vmap(lambda r: jnp.searchsorted(r, r, side="right")
                     - jnp.searchsorted(r, r, side="left"))(s).astype(jnp.float32)
    tf = (1.0 + jnp.log(jnp.maximum(count, 1.0))) if sublinear_tf else count
    w = jnp.where(first, tf * jnp.take(idf, s, axis=0, mode="clip"), 0.0)
    norm = jnp.sqrt(jnp.sum(w * w, axis=-1, keepdims=True))
    return jnp.where(first, s, 0), w / jnp.maximum(norm, 1e-12)


class TfidfLinear(nn.Module):
    """Logistic regression on TF-IDF bags plus a wide term on side features.

    ``__call__(bags, side, train)``: ``bags`` maps a bag name to ``(ids [B, L], weights [B, L])``
    from :func:`tfidf_bag`; ``side`` holds the side features (int ids named in
    ``side_cardinalities``, float numbers ``[B]`` or ``[B, k]``). Returns the logit ``[B]``.
    Weights start at zero (the model starts at probability 0.5 and is convex in its weights).
    ``dropout`` drops bag entries in training (a regulariser for the many rare n-grams).
    ``num_outputs``: ``None`` gives one logit per row ``[B]``; ``k`` gives ``[B, k]`` (one
    logistic regression per label of a multi-label task, sharing the features).
    """

    bag_cardinalities: Mapping[str, int]
    side_cardinalities: Mapping[str, int] = None
    dropout: float = 0.0
    num_outputs: int | None = None
    input_kind: ClassVar[str] = "tfidf"   # what the task's forward passes as ``bags``

    @nn.compact
    def __call__(self, bags: Mapping[str, tuple], side: Mapping[str, jax.Array] | None = None, *,
                 train: bool = False):
        missing = sorted(set(self.bag_cardinalities) - set(bags))
        if missing:
            raise KeyError(f"TfidfLinear: bags {missing} missing; expected "
                           f"{sorted(self.bag_cardinalities)}")
        k = self.num_outputs or 1
        logit = self.param("bias", nn.initializers.zeros, () if self.num_outputs is None else (k,),
                           jnp.float32)
        for name in sorted(self.bag_cardinalities):
            ids, weights = bags[name]
            if train and self.dropout > 0:
                weights = nn.Dropout(self.dropout, deterministic=False)(weights)
            table = Embedding(self.bag_cardinalities[name], k, row_multiple=1,
                              embedding_init=nn.initializers.zeros,
                              name=f"bag_{name.replace('/', '_')}")
            term = jnp.sum(table(ids) * weights[..., None], axis=-2)
            logit = logit + (term[..., 0] if self.num_outputs is None else term)
        return logit + _side_logit(self, side, self.side_cardinalities, self.num_outputs)


def _side_logit(module: nn.Module, side, cards, num_outputs: int | None = None):
    """The wide linear term on side features: one weight per id, a dense layer on numbers
    (``[B]``, or ``[B, num_outputs]``)."""
    side, cards = dict(side or {}), dict(cards or {})
    k = num_outputs or 1
    squeeze = (lambda t: t[..., 0]) if num_outputs is None else (lambda t: t)
    total = 0.0
    for name in sorted(cards):
        table = Embedding(cards[name], k, row_multiple=1, embedding_init=nn.initializers.zeros,
                          name=f"side_{name.replace('/', '_')}")
        total = total + squeeze(table(side[name]))
    numeric = [jnp.reshape(v, (v.shape[0], -1)).astype(jnp.float32)
               for k_, v in sorted(side.items())
               if k_ not in cards and jnp.issubdtype(v.dtype, jnp.floating)]
    if numeric:
        init = nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "embed"))
        x = jnp.concatenate(numeric, axis=-1)
        total = total + squeeze(Dense(k, use_bias=False, kernel_init=init,
                                      name="side_numeric")(x))
    return total


class TextCNN(nn.Module):
    """A text CNN over word ids in text order (``bags``: name -> ids ``[B, L]``, 0 = padding).

    Each of ``sequence_bags`` present is embedded (``embed_dim``), convolved with ``filters``
    filters of each width in ``kernel_sizes`` (ReLU) and max-pooled over its non-padding
    positions (an empty text pools to zeros); the pooled vectors go through an MLP (``hidden``,
    ``dropout``) to one logit, plus the wide term on side features. Other bags (character
    n-grams) are not read: run it with ``data.word_ngrams=[1] data.char_ngrams=[]``.
    """

    bag_cardinalities: Mapping[str, int]
    side_cardinalities: Mapping[str, int] = None
    sequence_bags: Sequence[str] = ("text", "subject")
    embed_dim: int = 64
    kernel_sizes: Sequence[int] = (2, 3, 4)
    filters: int = 64
    hidden: Sequence[int] = (64,)
    dropout: float = 0.3
    input_kind: ClassVar[str] = "ids"

    @nn.compact
    def __call__(self, bags: Mapping[str, jax.Array], side: Mapping[str, jax.Array] | None = None,
                 *, train: bool = False):
        names = [n for n in self.sequence_bags if n in self.bag_cardinalities]
        if not names:
            raise ValueError(f"TextCNN: none of sequence_bags {list(self.sequence_bags)} is among "
                             f"the bags {sorted(self.bag_cardinalities)}")
        pooled = []
        for name in names:
            ids = bags[name]
            mask = (ids > 0)[..., None]
            x = Embedding(self.bag_cardinalities[name], self.embed_dim,
                          name=f"embed_{name}")(ids) * mask
            for k in self.kernel_sizes:
                h = nn.relu(conv(self.filters, k, spatial_dims=1, name=f"conv_{name}_{k}")(x))
                pooled.append(jnp.max(jnp.where(mask, h, 0.0), axis=1))
        x = jnp.concatenate(pooled, axis=-1)
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        mlp = MLP(tuple(self.hidden), out_features=1, dropout=self.dropout)
        logit = mlp(x, train=train)[..., 0]
        return logit + _side_logit(self, side, self.side_cardinalities)


POOLINGS = ("max", "mean", "max_mean")


def _sequence_names(module: nn.Module) -> list[str]:
    names = [n for n in module.sequence_bags if n in module.bag_cardinalities]
    if not names:
        raise ValueError(f"{type(module).__name__}: none of sequence_bags "
                         f"{list(module.sequence_bags)} is among the bags "
                         f"{sorted(module.bag_cardinalities)}")
    if module.pooling not in POOLINGS:
        raise ValueError(f"{type(module).__name__}.pooling={module.pooling!r}; valid choices: "
                         f"{list(POOLINGS)}")
    return names


def _pool(h: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
    """``h [B, L, D]`` pooled over the positions where ``mask [B, L]`` holds: the maximum, the
    mean or both concatenated. A row without any valid position pools to zeros."""
    parts = []
    if pooling in ("max", "max_mean"):
        low = jnp.finfo(h.dtype).min
        top = jnp.max(jnp.where(mask[..., None], h, low), axis=1)
        parts.append(jnp.where(jnp.any(mask, axis=1, keepdims=True), top, 0.0))
    if pooling in ("mean", "max_mean"):
        parts.append(masked_pool(h, mask, "mean"))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _head(module: nn.Module, pooled: list, side, train: bool):
    """Pooled vectors -> dropout -> MLP -> one logit, plus the wide term on side features."""
    x = jnp.concatenate(pooled, axis=-1)
    if module.dropout:
        x = nn.Dropout(module.dropout, deterministic=not train)(x)
    mlp = MLP(tuple(module.hidden), out_features=1, dropout=module.dropout)
    logit = mlp(x, train=train)[..., 0]
    return logit + _side_logit(module, side, module.side_cardinalities)


class BiLSTM(nn.Module):
    """A bidirectional LSTM over word ids in text order (``bags``: name -> ids ``[B, L]``,
    0 = padding at the end of a row, as the ``Text`` feature writes them).

    Each of ``sequence_bags`` present is embedded (``embed_dim``) and read by two
    ``flax.linen.RNN`` layers over ``OptimizedLSTMCell`` (``lstm_size`` each): one left to
    right, one right to left (``reverse=True, keep_order=True``). Both get ``seq_lengths``
    (the non-padding count of a row), so the backward direction starts at the last word, not in
    the padding, and padding never reaches a word's state. The concatenated states are pooled
    over the words (``pooling``: ``max``, ``mean`` or ``max_mean``; an empty text pools to
    zeros) and go through an MLP (``hidden``, ``dropout``) to one logit, plus the wide term on
    side features. ``dropout`` also applies to the embeddings in training. ``unroll``: time
    steps per iteration of the scan (a speed setting; the values do not change). Other bags
    (character n-grams) are not read: run it with ``data.word_ngrams=[1] data.char_ngrams=[]``.
    """

    bag_cardinalities: Mapping[str, int]
    side_cardinalities: Mapping[str, int] = None
    sequence_bags: Sequence[str] = ("text", "subject")
    embed_dim: int = 64
    lstm_size: int = 64
    hidden: Sequence[int] = (64,)
    dropout: float = 0.3
    pooling: str = "max"
    unroll: int = 1
    input_kind: ClassVar[str] = "ids"

    @nn.compact
    def __call__(self, bags: Mapping[str, jax.Array], side: Mapping[str, jax.Array] | None = None,
                 *, train: bool = False):
        names = _sequence_names(self)
        if self.lstm_size < 1 or self.unroll < 1:
            raise ValueError(f"BiLSTM: lstm_size and unroll must be >= 1; got "
                             f"{self.lstm_size}, {self.unroll}")
        pooled = []
        for name in names:
            ids = bags[name]
            mask = ids > 0
            lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
            x = Embedding(self.bag_cardinalities[name], self.embed_dim,
                          name=f"embed_{name}")(ids) * mask[..., None]
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            key = name.replace("/", "_")
            fwd_cell = nn.OptimizedLSTMCell(self.lstm_size, name=f"lstm_{key}_fwd")
            bwd_cell = nn.OptimizedLSTMCell(self.lstm_size, name=f"lstm_{key}_bwd")
            fwd = nn.RNN(fwd_cell, unroll=self.unroll)(x, seq_lengths=lengths)
            bwd = nn.RNN(bwd_cell, reverse=True, keep_order=True, unroll=self.unroll)(
                x, seq_lengths=lengths)
            pooled.append(_pool(jnp.concatenate([fwd, bwd], axis=-1), mask, self.pooling))
        return _head(self, pooled, side, train)


class TextTransformer(nn.Module):
    """A small transformer encoder over word ids in text order (``bags``: name -> ids
    ``[B, L]``, 0 = padding).

    Each of ``sequence_bags`` present: token embeddings (``embed_dim``) plus learned absolute
    positions (``max_len`` of them; longer inputs are an error), LayerNorm and dropout, then the
    core :class:`~mlsd_jax.models.layers.TransformerEncoder` (``num_layers`` pre-LN blocks,
    ``num_heads`` heads, ``mlp_dim``) with the padding masked as keys; the outputs are pooled
    over the words (``pooling``, default ``mean``; an empty text pools to zeros) and go through
    an MLP (``hidden``, ``dropout``) to one logit, plus the wide term on side features. Other
    bags (character n-grams) are not read: run it with ``data.word_ngrams=[1]
    data.char_ngrams=[]``.
    """

    bag_cardinalities: Mapping[str, int]
    side_cardinalities: Mapping[str, int] = None
    sequence_bags: Sequence[str] = ("text", "subject")
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 128
    max_len: int = 512
    hidden: Sequence[int] = (64,)
    dropout: float = 0.1
    attention_dropout: float = 0.0
    pooling: str = "mean"
    input_kind: ClassVar[str] = "ids"

    @nn.compact
    def __call__(self, bags: Mapping[str, jax.Array], side: Mapping[str, jax.Array] | None = None,
                 *, train: bool = False):
        names = _sequence_names(self)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"TextTransformer: embed_dim={self.embed_dim} must be a multiple of "
                             f"num_heads={self.num_heads}")
        pooled = []
        for name in names:
            ids = bags[name]
            length = ids.shape[1]
            if length > self.max_len:
                raise ValueError(f"TextTransformer: bag {name!r} holds {length} positions, more "
                                 f"than max_len={self.max_len}; raise model.max_len")
            mask = ids > 0
            key = name.replace("/", "_")
            tokens = Embedding(self.bag_cardinalities[name], self.embed_dim,
                               name=f"embed_{key}")(ids)
            positions = Embedding(self.max_len, self.embed_dim,
                                  embedding_init=nn.initializers.normal(0.02),
                                  name=f"position_{key}")(jnp.arange(length, dtype=jnp.int32))
            x = layer_norm(name=f"input_norm_{key}")(tokens + positions[None])
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
            h = TransformerEncoder(self.num_layers, self.num_heads, self.mlp_dim, self.dropout,
                                   self.attention_dropout, name=f"encoder_{key}")(
                                       x, mask, train=train)
            pooled.append(_pool(h, mask, self.pooling))
        return _head(self, pooled, side, train)
