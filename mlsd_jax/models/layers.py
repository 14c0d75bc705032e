"""Reusable layers whose parameters carry logical axis names (see ``mlsd_jax.sharding``).

The transformer blocks here serve the listwise ranker now and the text, speech and sequence
models later: inputs are ``[..., length, d_model]`` with a boolean ``mask`` over ``length``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlsd_jax.utils.xla_flags import use_unrolled_threefry_on_cpu

# Dropout and input noise draw threefry bits: same bits, one fused kernel on CPU (see there).
use_unrolled_threefry_on_cpu()

Initializer = Callable[..., jax.Array]


def _kernel(names, init: Initializer = nn.initializers.lecun_normal()):
    return nn.with_logical_partitioning(init, names)


def _bias(names):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def dense(features: int, in_name: str = "embed", out_name: str = "mlp", *, use_bias: bool = True,
          dtype=None, name: str | None = None) -> "Dense":
    """:class:`Dense` whose kernel carries logical names ``(in_name, out_name)``."""
    return Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                 kernel_init=_kernel((in_name, out_name)), bias_init=_bias((out_name,)))


def layer_norm(dtype=None, name: str | None = None) -> nn.LayerNorm:
    """``nn.LayerNorm`` over an ``embed`` axis (scale and bias named for sharding)."""
    return nn.LayerNorm(dtype=dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                ("embed",)),
                        bias_init=_bias(("embed",)))


class Dense(nn.Module):
    """``nn.Dense`` with the same parameters and forward values, and a hand-written gradient.

    Same parameter names, shapes and initialisers, and auto-named ``Dense_<i>`` like flax's,
    so checkpoints are interchangeable. Autodiff sums the bias gradient over the batch with a
    reduction, which XLA:CPU (with reductions left to its own emitter, see
    :mod:`mlsd_jax.utils.xla_flags`) splits into slow windowed trees; here it is a product with
    a vector of ones, a matrix product like the other two. Train steps of the rankers: 1.10x
    (attention) and 1.14x (MLP) on a 2-core CPU.
    """

    features: int
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            self.param_dtype)
        if not self.use_bias:
            x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
            return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return _affine(x, kernel, bias)


@jax.custom_vjp
def _affine(x, kernel, bias):
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def _affine_fwd(x, kernel, bias):
    return _affine(x, kernel, bias), (x, kernel)


def _affine_bwd(res, g):
    x, kernel = res
    dx = jax.lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())))
    g2 = g.reshape(-1, g.shape[-1])
    dk = x.reshape(-1, x.shape[-1]).T @ g2
    return dx, dk, jnp.ones((g2.shape[0],), g.dtype) @ g2  # the bias gradient, as a product


_affine.defvjp(_affine_fwd, _affine_bwd)


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
    """Masked multi-head self-attention over the ``length`` axis; heads shard on ``heads``.

    Padded keys get no weight; padded queries output zeros (before the output projection).

    ``lists_per_chunk`` trades memory traffic for loop steps. The ``[lists, heads, L, L]`` scores
    are the largest tensors of a listwise model (16 MiB for 64 lists of 128 items and 4 heads),
    and on CPU every elementwise pass over them (mask, softmax, its gradient) goes through main
    memory. With chunks, a loop computes the attention of ``lists_per_chunk`` lists per device at
    a time and recomputes it in the backward pass, so the scores of a chunk stay in cache: the
    attention's forward + backward runs about 3x faster on CPU. ``None`` (default) chooses: about
    1 MiB of scores per device on the CPU backend, no chunks elsewhere (GPUs stream the whole
    tensor faster than a loop) and none when the batch size is not a known integer (shape-
    polymorphic export). ``0`` turns chunks off. Results agree with the unchunked computation to
    float rounding.
    """

    num_heads: int
    head_dim: int | None = None
    dropout: float = 0.0
    dtype: jnp.dtype | None = None
    lists_per_chunk: int | None = None

    @nn.compact
    def __call__(self, x, mask=None, *, train: bool = False):
        d_model = x.shape[-1]
        head_dim = self.head_dim or d_model // self.num_heads
        proj = lambda name: nn.DenseGeneral(  # noqa: E731
            (self.num_heads, head_dim), dtype=self.dtype, name=name,
            kernel_init=_kernel(("embed", "heads", "kv")), bias_init=_bias(("heads", "kv")))
        q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)
        if mask is None:
            mask = jnp.ones(x.shape[:-1], bool)
        mask = jnp.broadcast_to(mask, x.shape[:-1])
        dropout_rng = self.make_rng("dropout") if train and self.dropout > 0 else None
        out = dot_product_attention(q, k, v, mask, dropout=self.dropout if train else 0.0,
                                    dropout_rng=dropout_rng, lists_per_chunk=self.lists_per_chunk)
        return nn.DenseGeneral(d_model, axis=(-2, -1), dtype=self.dtype, name="out",
                               kernel_init=_kernel(("heads", "kv", "embed")),
                               bias_init=_bias(("embed",)))(out)


# Float32 scores per chunk and device: 1 MiB, a Zen 4 core's L2 (4 lists of 128 items and 4 heads;
# on the 2-core EPYC that measured it, 2-8 lists per chunk ran alike and 16 lists 1.35x slower).
_CPU_CHUNK_SCORES = 1 << 18


def dot_product_attention(q, k, v, mask, *, dropout: float = 0.0, dropout_rng=None,
                          lists_per_chunk: int | None = None):
    """``softmax(q k^T / sqrt(d)) v`` per list and head, keys masked by ``mask``.

    Args:
      q, k, v: ``[..., L, heads, head_dim]``.
      mask: ``[..., L]`` bool, valid items. Padded keys get zero weight; rows of padded queries
        are zero in the output.
      dropout, dropout_rng: dropout on the attention weights (training only).
      lists_per_chunk: see :class:`MultiHeadSelfAttention`.

    Returns ``[..., L, heads, head_dim]``.
    """
    lead, (length, heads, head_dim) = q.shape[:-3], q.shape[-3:]
    # Scaling q (small) instead of the scores (large); exact when head_dim is a power of 4.
    q = q * jnp.asarray(1.0 / math.sqrt(head_dim), q.dtype)
    n_lists = math.prod(lead) if all(isinstance(d, int) for d in lead) else None
    chunk = _chunk_size(n_lists, heads, length, lists_per_chunk)
    if chunk is None:
        return _attention(q, k, v, mask, dropout, dropout_rng)
    flat = lambda t: t.reshape((n_lists,) + t.shape[len(lead):])  # noqa: E731
    q, k, v, m = flat(q), flat(k), flat(v), flat(mask)
    n_chunks = n_lists // chunk

    def split(t):
        # Chunk j holds lists j, j + n_chunks, ...: a batch sharded in contiguous blocks over
        # the devices keeps every chunk spread over all of them (no collectives in the loop).
        return jnp.swapaxes(t.reshape((chunk, n_chunks) + t.shape[1:]), 0, 1)

    def body(args):
        q, k, v, m, index = args
        rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
        return _attention(q, k, v, m, dropout, rng)

    out = jax.lax.map(jax.checkpoint(body, prevent_cse=False),
                      (split(q), split(k), split(v), split(m), jnp.arange(n_chunks)))
    out = jnp.swapaxes(out, 0, 1).reshape((n_lists,) + out.shape[2:])
    return out.reshape(lead + out.shape[1:])


def _chunk_size(n_lists, heads, length, lists_per_chunk):
    """Lists per loop step, or None for one step over the whole batch."""
    if n_lists is None or lists_per_chunk == 0:
        return None
    devices = jax.device_count()
    if lists_per_chunk is None:
        if jax.default_backend() != "cpu":
            return None
        lists_per_chunk = max(1, _CPU_CHUNK_SCORES // (heads * length * length))
    chunk = math.gcd(n_lists, lists_per_chunk * devices)
    return None if chunk >= n_lists else chunk


def _attention(q, k, v, mask, dropout, dropout_rng):
    """One batch of lists (q already scaled): ``[..., L, H, D]`` in and out."""
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k)
    logits = jnp.where(mask[..., None, None, :], logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    if dropout > 0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout), 0.0).astype(v.dtype)
    out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    return jnp.where(mask[..., :, None, None], out, jnp.zeros((), out.dtype))


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
