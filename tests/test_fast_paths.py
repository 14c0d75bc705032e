"""The CPU fast paths change speed, not results: chunked attention, the unrolled threefry
lowering, the default XLA:CPU flags, and the attention ranker's parameter layout."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlsd_jax.models import ListwiseAttentionRanker, MultiHeadSelfAttention
from mlsd_jax.utils import xla_flags


def _inputs(batch=16, length=12, d_model=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, d_model)).astype(np.float32)
    mask = rng.random((batch, length)) < 0.7
    mask[:, 0] = True
    mask[-1] = False  # a fully padded list
    x[~mask] = 50.0    # garbage under the mask must not leak
    return jnp.asarray(x), jnp.asarray(mask)


@pytest.mark.parametrize("lists_per_chunk", [1, 2])
def test_chunked_attention_matches_unchunked(lists_per_chunk):
    x, mask = _inputs(batch=32)  # 2 or 4 chunks of 1 or 2 lists per device (8 in tests)
    chunked = MultiHeadSelfAttention(num_heads=2, lists_per_chunk=lists_per_chunk)
    whole = MultiHeadSelfAttention(num_heads=2, lists_per_chunk=0)
    params = whole.init(jax.random.key(0), x, mask)["params"]

    def loss(p, module):
        out = module.apply({"params": p}, x, mask)
        return jnp.sum(jnp.where(mask[..., None], out, 0.0) ** 2), out

    (l1, o1), g1 = jax.jit(jax.value_and_grad(lambda p: loss(p, chunked), has_aux=True))(params)
    (l0, o0), g0 = jax.jit(jax.value_and_grad(lambda p: loss(p, whole), has_aux=True))(params)
    valid = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(o1)[valid], np.asarray(o0)[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):  # key biases: 0 up to rounding
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)
    assert np.all(np.isfinite(np.asarray(o1)))


def test_chunked_attention_keeps_leading_axes_and_padded_queries_zero():
    x, mask = _inputs(batch=16)
    module = MultiHeadSelfAttention(num_heads=2, lists_per_chunk=1)
    params = module.init(jax.random.key(0), x, mask)["params"]
    x4, m4 = x.reshape(4, 4, *x.shape[1:]), mask.reshape(4, 4, -1)
    out = module.apply({"params": params}, x4, m4)
    ref = MultiHeadSelfAttention(num_heads=2, lists_per_chunk=0).apply({"params": params}, x, mask)
    np.testing.assert_allclose(np.asarray(out).reshape(ref.shape), np.asarray(ref), atol=1e-5)


def test_unrolled_threefry_gives_the_same_bits():
    if not xla_flags.use_unrolled_threefry_on_cpu():
        pytest.skip("this JAX has no threefry lowering rules to swap")
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as tf

    def draw(seed):
        key = jax.random.key(seed)
        k1, k2, k3 = jax.random.split(key, 3)
        return (jax.random.bits(k1, (3, 257)), jax.random.normal(k2, (5, 33)),
                jax.random.bernoulli(k3, 0.8, (7, 64)))

    unrolled = jax.jit(draw)(3)
    mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_cpu_lowering_rule, platform="cpu")
    try:
        rolled = jax.jit(lambda s: draw(s))(3)  # a new function: lowered with the rolled rule
    finally:
        xla_flags._THREEFRY_PATCHED = False
        assert xla_flags.use_unrolled_threefry_on_cpu()
    for a, b in zip(unrolled, rolled):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cpu_flags_leave_user_flags_alone(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot --foo=1")
    out = xla_flags.set_cpu_xla_flags({"xla_cpu_experimental_ynn_fusion_type": "-reduce",
                                       "xla_bar": "2"})
    assert out == "--xla_cpu_experimental_ynn_fusion_type=dot --foo=1 --xla_bar=2"
    monkeypatch.delenv("XLA_FLAGS")
    assert xla_flags.set_cpu_xla_flags() == " ".join(
        f"--{k}={v}" for k, v in xla_flags.CPU_XLA_FLAGS.items())
    assert os.environ["XLA_FLAGS"] == xla_flags.set_cpu_xla_flags()  # idempotent


def test_attention_ranker_parameter_layout_is_unchanged():
    """Checkpoints written before the fast paths restore: same paths, shapes, logical axes."""
    model = ListwiseAttentionRanker(d_model=64, encoder_hidden=(128,), num_layers=2, num_heads=4,
                                    mlp_dim=128, dropout=0.2, input_noise=0.1, head_hidden=(64,))
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                           jnp.ones((2, 8, 136)), jnp.ones((2, 8), bool))
    leaves = jax.tree_util.tree_flatten_with_path(
        variables["params"], is_leaf=lambda v: isinstance(v, nn.Partitioned))[0]
    layout = {"/".join(p.key for p in path): (
        tuple((v.value if isinstance(v, nn.Partitioned) else v).shape), getattr(v, "names", None))
        for path, v in leaves}
    assert len(layout) == 44
    assert sum(int(np.prod(s)) for s, _ in layout.values()) == 97_345
    attn = "TransformerEncoder_0/block_0/MultiHeadSelfAttention_0"
    assert {k[len(attn) + 1:]: v for k, v in layout.items() if k.startswith(attn)} == {
        "query/kernel": ((64, 4, 16), ("embed", "heads", "kv")),
        "query/bias": ((4, 16), ("heads", "kv")),
        "key/kernel": ((64, 4, 16), ("embed", "heads", "kv")),
        "key/bias": ((4, 16), ("heads", "kv")),
        "value/kernel": ((64, 4, 16), ("embed", "heads", "kv")),
        "value/bias": ((4, 16), ("heads", "kv")),
        "out/kernel": ((4, 16, 64), ("heads", "kv", "embed")),
        "out/bias": ((64,), ("embed",)),
    }
    assert layout["MLP_0/LayerNorm_0/scale"] == ((128,), None)
    assert layout["TransformerEncoder_0/LayerNorm_0/scale"] == ((64,), ("embed",))
