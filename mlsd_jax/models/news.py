"""NRMS: neural news recommendation with multi-head self-attention (Wu et al., EMNLP 2019).

* The **news encoder** reads a title's word ids ``[..., T]``: word embeddings, multi-head
  self-attention over the words, then additive attention pooling into one news vector.
* The **user encoder** reads the vectors of the user's clicked news ``[B, H, D]``: multi-head
  self-attention over the clicks, then additive attention pooling into one user vector.
* The **score** of a candidate is the dot product of the user and candidate vectors.

Padding is explicit everywhere: word id 0 is padding (masked out of both attentions), a
history slot or candidate slot is padding where its mask is false. A title with no words gives
a zero news vector; a user with no clicked news gets a learned ``empty_user`` vector, so every
output is finite. Padded candidates score ``-1e9``.

The word table is an :class:`~mlsd_jax.models.embedding.Embedding` (ids past the vocabulary read
its OOV row) and the attention layers are :mod:`mlsd_jax.models.layers`', so parameters carry
logical axis names and shard by the mesh rules. Unlike the paper, the self-attention output is
projected back to the embedding width (the layer's output projection), so the news and user
vectors have ``embed_dim`` entries.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlsd_jax.models.embedding import Embedding
from mlsd_jax.models.layers import MultiHeadSelfAttention, dense

MASKED_SCORE = -1e9


class AdditiveAttention(nn.Module):
    """Pools ``x [..., L, D]`` over ``L`` with weights ``softmax_l(q . tanh(W x_l + b))``.

    Positions where ``mask [..., L]`` is false get no weight; a row with no valid position
    pools to zeros (values and gradients finite).
    """

    query_dim: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, mask):
        h = jnp.tanh(dense(self.query_dim, "embed", "mlp", dtype=self.dtype, name="proj")(x))
        logits = dense(1, "mlp", "embed", use_bias=False, dtype=self.dtype, name="query")(h)[..., 0]
        logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1) * mask
        return jnp.einsum("...l,...ld->...d", weights.astype(x.dtype), x)


class NewsEncoder(nn.Module):
    """Title word ids ``[..., T]`` (0 = padding) -> news vectors ``[..., embed_dim]``."""

    vocab_size: int
    embed_dim: int = 64
    num_heads: int = 4
    head_dim: int | None = None
    query_dim: int = 64
    dropout: float = 0.2
    lists_per_chunk: int | None = 0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, tokens, *, train: bool = False):
        mask = tokens > 0
        x = Embedding(self.vocab_size, self.embed_dim, dtype=self.dtype, name="words")(tokens)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = MultiHeadSelfAttention(self.num_heads, self.head_dim, dtype=self.dtype,
                                   lists_per_chunk=self.lists_per_chunk, name="self_attention")(
                                       x, mask, train=train)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return AdditiveAttention(self.query_dim, self.dtype, name="pool")(x, mask)


class UserEncoder(nn.Module):
    """Clicked-news vectors ``[B, H, D]`` + mask ``[B, H]`` -> user vectors ``[B, D]``."""

    num_heads: int = 4
    head_dim: int | None = None
    query_dim: int = 64
    dropout: float = 0.2
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, news, mask, *, train: bool = False):
        attention = MultiHeadSelfAttention(self.num_heads, self.head_dim, dtype=self.dtype,
                                           lists_per_chunk=0, name="self_attention")
        x = attention(news, mask, train=train)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        pooled = AdditiveAttention(self.query_dim, self.dtype, name="pool")(x, mask)
        empty = self.param("empty_user", nn.with_logical_partitioning(
            nn.initializers.normal(0.05), ("embed",)), (news.shape[-1],), jnp.float32)
        return jnp.where(jnp.any(mask, axis=-1, keepdims=True), pooled,
                         empty.astype(pooled.dtype))


class NRMS(nn.Module):
    """Scores candidate news for users from titles alone.

    ``__call__(history, history_mask, candidates, candidate_mask)``: word ids ``[B, H, T]`` of
    the clicked news and ``[B, C, T]`` of the candidates, masks ``[B, H]`` / ``[B, C]`` ->
    scores ``[B, C]``. :meth:`encode_news` and :meth:`score_vectors` are the two halves, for
    evaluating with each news encoded once.
    """

    vocab_size: int
    embed_dim: int = 64
    num_heads: int = 4
    head_dim: int | None = None
    query_dim: int = 64
    dropout: float = 0.2
    lists_per_chunk: int | None = 0
    dtype: jnp.dtype | None = None

    def setup(self):
        if self.vocab_size < 1:
            raise ValueError(f"NRMS.vocab_size must be >= 1 (word ids incl. padding and OOV), "
                             f"got {self.vocab_size}")
        self.news_encoder = NewsEncoder(self.vocab_size, self.embed_dim, self.num_heads,
                                        self.head_dim, self.query_dim, self.dropout,
                                        self.lists_per_chunk, self.dtype)
        self.user_encoder = UserEncoder(self.num_heads, self.head_dim, self.query_dim,
                                        self.dropout, self.dtype)

    def encode_news(self, tokens, *, train: bool = False):
        """Word ids ``[..., T]`` -> news vectors ``[..., embed_dim]``."""
        return self.news_encoder(tokens, train=train)

    def score_vectors(self, history, history_mask, candidates, candidate_mask, *,
                      train: bool = False):
        """News vectors of the history ``[B, H, D]`` and candidates ``[B, C, D]`` -> scores."""
        user = self.user_encoder(history, history_mask, train=train)
        scores = jnp.einsum("bd,bcd->bc", user, candidates).astype(jnp.float32)
        return jnp.where(candidate_mask, scores, MASKED_SCORE)

    def __call__(self, history, history_mask, candidates, candidate_mask, *, train: bool = False):
        h = self.encode_news(history, train=train)
        c = self.encode_news(candidates, train=train)
        return self.score_vectors(h, history_mask, c, candidate_mask, train=train)
