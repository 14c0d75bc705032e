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
pooling, an MLP (Kim, 2014).
"""
from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlsd_jax.models.conv import conv
from mlsd_jax.models.embedding import Embedding
from mlsd_jax.models.layers import MLP, Dense

__all__ = ["TextCNN", "TfidfLinear", "fit_idf", "tfidf_bag"]


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
    """

    bag_cardinalities: Mapping[str, int]
    side_cardinalities: Mapping[str, int] = None
    dropout: float = 0.0
    input_kind: ClassVar[str] = "tfidf"   # what the task's forward passes as ``bags``

    @nn.compact
    def __call__(self, bags: Mapping[str, tuple], side: Mapping[str, jax.Array] | None = None, *,
                 train: bool = False):
        missing = sorted(set(self.bag_cardinalities) - set(bags))
        if missing:
            raise KeyError(f"TfidfLinear: bags {missing} missing; expected "
                           f"{sorted(self.bag_cardinalities)}")
        logit = self.param("bias", nn.initializers.zeros, (), jnp.float32)
        for name in sorted(self.bag_cardinalities):
            ids, weights = bags[name]
            if train and self.dropout > 0:
                weights = nn.Dropout(self.dropout, deterministic=False)(weights)
            table = Embedding(self.bag_cardinalities[name], 1, row_multiple=1,
                              embedding_init=nn.initializers.zeros,
                              name=f"bag_{name.replace('/', '_')}")
            logit = logit + jnp.sum(table(ids)[..., 0] * weights, axis=-1)
        return logit + _side_logit(self, side, self.side_cardinalities)


def _side_logit(module: nn.Module, side, cards):
    """The wide linear term on side features: one weight per id, a dense layer on numbers."""
    side, cards = dict(side or {}), dict(cards or {})
    total = 0.0
    for name in sorted(cards):
        table = Embedding(cards[name], 1, row_multiple=1, embedding_init=nn.initializers.zeros,
                          name=f"side_{name.replace('/', '_')}")
        total = total + table(side[name])[..., 0]
    numeric = [jnp.reshape(v, (v.shape[0], -1)).astype(jnp.float32)
               for k, v in sorted(side.items())
               if k not in cards and jnp.issubdtype(v.dtype, jnp.floating)]
    if numeric:
        init = nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "embed"))
        x = jnp.concatenate(numeric, axis=-1)
        total = total + Dense(1, use_bias=False, kernel_init=init, name="side_numeric")(x)[..., 0]
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
