"""Reusable layers whose parameters carry logical axis names (see ``mlsd_jax.sharding``).

The transformer blocks here serve the listwise ranker now and the text, speech and sequence
models later: inputs are ``[..., length, d_model]`` with a boolean ``mask`` over ``length``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def _kernel(names, init: Initializer = nn.initializers.lecun_normal()):
    return nn.with_logical_partitioning(init, names)


def _bias(names):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def dense(features: int, in_name: str = "embed", out_name: str = "mlp", *, use_bias: bool = True,
          dtype=None, name: str | None = None) -> nn.Dense:
    """``nn.Dense`` whose kernel carries logical names ``(in_name, out_name)``."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=_kernel((in_name, out_name)), bias_init=_bias((out_name,)))


def layer_norm(dtype=None, name: str | None = None) -> nn.LayerNorm:
    """``nn.LayerNorm`` over an ``embed`` axis (scale and bias named for sharding)."""
    return nn.LayerNorm(dtype=dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                ("embed",)),
                        bias_init=_bias(("embed",)))


class MLP(nn.Module):
    """Dense -> activation -> dropout, repeated; optional final projection to ``out_features``."""

    hidden: Sequence[int]
    out_features: int | None = None
    dropout: float = 0.0
    activation: Callable = nn.relu
    layer_norm: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        # Kernels alternate (embed, mlp) / (mlp, embed): under tensor parallelism a column-split
        # layer feeds a row-split one (Megatron style) instead of all-gathering in between.
        in_name = "embed"
        for width in self.hidden:
            out_name = "mlp" if in_name == "embed" else "embed"
            x = dense(width, in_name, out_name, dtype=self.dtype)(x)
            in_name = out_name
            if self.layer_norm:
                x = nn.LayerNorm(dtype=self.dtype)(x)
            x = self.activation(x)
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        if self.out_features is not None:
            x = dense(self.out_features, in_name, "embed", dtype=self.dtype)(x)
        return x


class MultiHeadSelfAttention(nn.Module):
    """Masked multi-head self-attention over the ``length`` axis; heads shard on ``heads``."""

    num_heads: int
    head_dim: int | None = None
    dropout: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, mask=None, *, train: bool = False):
        d_model = x.shape[-1]
        head_dim = self.head_dim or d_model // self.num_heads
        proj = lambda name: nn.DenseGeneral(  # noqa: E731
            (self.num_heads, head_dim), dtype=self.dtype, name=name,
            kernel_init=_kernel(("embed", "heads", "kv")), bias_init=_bias(("heads", "kv")))
        q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
        if mask is not None:
            pair = mask[..., None, :, None] & mask[..., None, None, :]
            logits = jnp.where(pair, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        if mask is not None:  # rows of padded queries attend to nothing
            weights = jnp.where(mask[..., None, :, None], weights, 0.0)
        if self.dropout:
            weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
        out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
        return nn.DenseGeneral(d_model, axis=(-2, -1), dtype=self.dtype, name="out",
                               kernel_init=_kernel(("heads", "kv", "embed")),
                               bias_init=_bias(("embed",)))(out)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer encoder block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, mask=None, *, train: bool = False):
        d_model = x.shape[-1]
        h = MultiHeadSelfAttention(self.num_heads, dropout=self.attention_dropout,
                                   dtype=self.dtype)(layer_norm(self.dtype)(x), mask, train=train)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
        h = MLP((self.mlp_dim,), out_features=d_model, activation=nn.gelu,
                dropout=self.dropout, dtype=self.dtype)(layer_norm(self.dtype)(x), train=train)
        return x + nn.Dropout(self.dropout, deterministic=not train)(h)


class TransformerEncoder(nn.Module):
    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, mask=None, *, train: bool = False):
        for i in range(self.num_layers):
            x = TransformerBlock(self.num_heads, self.mlp_dim, self.dropout,
                                 self.attention_dropout, self.dtype, name=f"block_{i}")(
                                     x, mask, train=train)
        return layer_norm(self.dtype)(x)
