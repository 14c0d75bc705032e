"""Embedding tables, conv blocks and optimizer parameter groups.

Sharding tests run on 8 simulated CPU devices (``tests/conftest.py``) and place params the way
the trainer does: eval_shape -> logical names -> ``tree_shardings`` -> jitted init.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from omegaconf import OmegaConf

from mlsd_jax import sharding as shd
from mlsd_jax.experiment import config_dir, typed
from mlsd_jax.models import ConvBNAct, Embedding, MultiEmbedding, conv, masked_pool
from mlsd_jax.models.embedding import table_rows
from mlsd_jax.training.optim import (OptimConfig, ScaleByRowwiseAdagradState, decay_mask,
                                     make_optimizer, rowwise_adagrad)

CARDS = {"user": 100, "item": 250, "tags": 60}  # table rows 104, 256, 64
DIM = 16


def _ids(rng, batch=8, tag_len=5):
    ids = {"user": rng.integers(-3, 110, batch), "item": rng.integers(0, 250, batch),
           "tags": rng.integers(0, 60, (batch, tag_len))}
    mask = rng.random((batch, tag_len)) < 0.6
    mask[0] = False  # one all-masked row
    return {k: v.astype(np.int32) for k, v in ids.items()}, {"tags": mask}


def _find_state(tree, kind):
    return [x for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, kind))
            if isinstance(x, kind)]


# ------------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("mesh_shape", [[1, 8], [2, 4]])
def test_row_sharded_tables_match_replicated(mesh_shape):
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": mesh_shape})
    rules = shd.validate_rules(shd.DEFAULT_RULES, mesh)
    n_model = mesh.shape["model"]
    model = MultiEmbedding(CARDS, DIM)
    ids, masks = _ids(np.random.default_rng(0))
    weights = np.random.default_rng(1).normal(size=(8, len(CARDS), DIM)).astype(np.float32)

    def init(rng):
        return model.init(rng, ids, masks)["params"]

    def loss(params, ids, masks):
        out = model.apply({"params": params}, ids, masks, stack=True)
        return jnp.sum(out * weights), out

    boxed = jax.eval_shape(init, jax.random.key(0))
    shardings = shd.tree_shardings(boxed, mesh, rules)
    params = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(jax.random.key(0))
    for field, card in CARDS.items():
        table = params[field]["embedding"]
        rows = table_rows(card)
        assert table.shape == (rows, DIM)
        assert table.sharding.spec == jax.sharding.PartitionSpec("model", None)
        budget = rows * DIM * 4 // n_model  # bytes one device may hold
        for shard in table.addressable_shards:
            assert shard.data.shape == (rows // n_model, DIM)
            assert shard.data.nbytes <= budget

    batch_sh = {k: shd.batch_sharding(mesh, rules, v.ndim) for k, v in ids.items()}
    mask_sh = {"tags": shd.batch_sharding(mesh, rules, 2)}
    step = jax.jit(jax.value_and_grad(loss, has_aux=True),
                   in_shardings=(shardings, batch_sh, mask_sh),
                   out_shardings=((shd.replicated(mesh), shd.replicated(mesh)), shardings))
    (value, out), grads = step(params, ids, masks)
    # The lookup gathers rows locally and sums partial results: no table is ever all-gathered.
    hlo = step.lower(params, ids, masks).compile().as_text()
    gathered = [line for line in hlo.splitlines() if " all-gather(" in line]
    for card in CARDS.values():
        assert not [line for line in gathered if f"[{table_rows(card)},{DIM}]" in line]

    host = jax.device_get(params)
    (value_r, out_r), grads_r = jax.jit(jax.value_and_grad(loss, has_aux=True))(host, ids, masks)
    np.testing.assert_allclose(out, out_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value, value_r, rtol=1e-5)
    for field in CARDS:
        g = grads[field]["embedding"]
        assert g.sharding.spec == jax.sharding.PartitionSpec("model", None)
        np.testing.assert_allclose(g, grads_r[field]["embedding"], rtol=1e-5, atol=1e-6)

    # Row-wise Adagrad state shards like the rows: one accumulator per row, rows / n per device.
    cfg = OptimConfig(embedding={"name": "rowwise_adagrad"})
    tx, _ = make_optimizer(cfg, 10)
    state_sh = shd.tree_shardings(jax.eval_shape(tx.init, boxed), mesh, rules)
    opt_state = jax.jit(lambda r: nn.meta.unbox(tx.init(init(r))),
                        out_shardings=state_sh)(jax.random.key(0))
    accs = _find_state(opt_state, ScaleByRowwiseAdagradState)[0].sum_of_squares
    for field, card in CARDS.items():
        acc = accs[field]["embedding"]
        assert acc.shape == (table_rows(card),)
        assert {s.data.shape for s in acc.addressable_shards} == {(table_rows(card) // n_model,)}


def test_lookup_any_shape_and_oov_row():
    layer = Embedding(num_embeddings=10, features=4, row_multiple=8)
    ids = jnp.array([[[0, 9, 10], [-1, 55, 3]]])  # shape [1, 2, 3]
    variables = layer.init(jax.random.key(0), ids)
    table = nn.meta.unbox(variables)["params"]["embedding"]
    assert table.shape == (16, 4)  # 10 ids + 1 OOV row, rounded up to a multiple of 8
    out = layer.apply(variables, ids)
    assert out.shape == (1, 2, 3, 4)
    expected = table[np.array([[[0, 9, 10], [10, 10, 3]]])]  # 10 is the OOV row
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(TypeError, match="must be integers"):
        layer.apply(variables, jnp.zeros(3))


@pytest.mark.parametrize("combiner", ["mean", "sum", "sqrtn"])
def test_masked_pooling_matches_numpy(combiner):
    rng = np.random.default_rng(2)
    layer = Embedding(num_embeddings=20, features=3)
    ids = rng.integers(0, 20, (4, 6)).astype(np.int32)
    mask = rng.random((4, 6)) < 0.5
    mask[1] = False
    mask[2] = True
    variables = layer.init(jax.random.key(1), ids, mask)
    table = np.asarray(nn.meta.unbox(variables)["params"]["embedding"])
    pooled = layer.apply(variables, ids, mask, combiner=combiner)
    total = (table[ids] * mask[..., None]).sum(1)
    count = np.maximum(mask.sum(1, keepdims=True), 1)
    ref = {"sum": total, "mean": total / count, "sqrtn": total / np.sqrt(count)}[combiner]
    np.testing.assert_allclose(pooled, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(pooled[1], 0.0)  # all-masked row: zeros

    grads = jax.grad(lambda v: layer.apply(v, ids, mask, combiner=combiner).sum())(variables)
    g = np.asarray(nn.meta.unbox(grads)["params"]["embedding"])
    assert np.isfinite(g).all()
    untouched = np.setdiff1d(np.arange(table.shape[0]), ids[mask])
    np.testing.assert_array_equal(g[untouched], 0.0)  # masked ids get no gradient
    with pytest.raises(ValueError, match="valid choices"):
        masked_pool(jnp.zeros((2, 3, 4)), jnp.ones((2, 3), bool), "max")


def test_multi_embedding_fields_and_dims():
    model = MultiEmbedding({"a": 5, "b": 7}, {"a": 2, "b": 3})
    ids = {"a": jnp.array([1, 2]), "b": jnp.array([[0, 6], [1, 1]])}
    masks = {"b": jnp.array([[True, False], [True, True]])}
    variables = model.init(jax.random.key(0), ids, masks)
    shapes = jax.tree.map(jnp.shape, nn.meta.unbox(variables)["params"])
    assert shapes == {"a": {"embedding": (8, 2)}, "b": {"embedding": (8, 3)}}
    out = model.apply(variables, ids, masks)
    assert out["a"].shape == (2, 2) and out["b"].shape == (2, 3)
    with pytest.raises(KeyError, match="expected \\['a', 'b'\\]"):
        model.apply(variables, {"a": ids["a"]})
    with pytest.raises(ValueError, match="stack=True needs one shared dimension"):
        model.apply(variables, ids, masks, stack=True)
    with pytest.raises(ValueError, match="no dimension for fields \\['b'\\]"):
        MultiEmbedding({"a": 5, "b": 7}, {"a": 2}).init(jax.random.key(0), ids, masks)


# ------------------------------------------------------------------------------------ convs
def test_conv_bn_act_names_and_batch_stats():
    block = ConvBNAct(8, kernel_size=3, strides=2)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3)) * 3.0 + 1.0
    variables = jax.jit(block.init)(jax.random.key(1), x)
    params = variables["params"]
    assert params["conv"]["kernel"].names == ("conv_h", "conv_w", "conv_in", "conv_out")
    assert "bias" not in params["conv"]
    assert params["bn"]["scale"].names == ("conv_out",) == params["bn"]["bias"].names
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [8, 1]})
    specs = jax.tree.map(lambda s: s.spec, shd.tree_shardings(
        params, mesh, shd.validate_rules(shd.DEFAULT_RULES, mesh)))
    assert all(s == jax.sharding.PartitionSpec(*([None] * len(s))) for s in jax.tree.leaves(specs))

    variables = nn.meta.unbox(variables)
    apply = jax.jit(block.apply, static_argnames=("train", "mutable"))
    y, updated = apply(variables, x, train=True, mutable=("batch_stats",))
    assert y.shape == (4, 4, 4, 8) and float(y.min()) >= 0.0  # stride 2, relu
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"],
                         updated["batch_stats"])
    assert all(jax.tree.leaves(moved))
    y_eval, same = apply(variables, x, train=False, mutable=("batch_stats",))
    jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], same["batch_stats"])
    assert not np.allclose(y_eval, y)  # running averages, not batch statistics


def test_conv_factory_shapes_and_errors():
    k1 = jax.eval_shape(conv(4, 5, spatial_dims=1).init, jax.random.key(0), jnp.ones((2, 9, 3)))
    assert k1["params"]["kernel"].names == ("conv_w", "conv_in", "conv_out")
    assert k1["params"]["kernel"].value.shape == (5, 3, 4)
    k3 = jax.eval_shape(conv(4, (1, 3, 3)).init, jax.random.key(0), jnp.ones((1, 2, 6, 6, 3)))
    assert k3["params"]["kernel"].names[:3] == ("conv_t", "conv_h", "conv_w")
    with pytest.raises(ValueError, match="strides=\\(1, 2, 2\\) must be an int or 2 ints"):
        conv(4, 3, (1, 2, 2))
    with pytest.raises(ValueError, match="not a jax.nn function"):
        jax.eval_shape(ConvBNAct(4, act="nope").init, jax.random.key(0), jnp.ones((1, 4, 4, 3)))


# -------------------------------------------------------------------------------- optimizer
class _Net(nn.Module):
    @nn.compact
    def __call__(self, ids, x, *, train=False):
        e = Embedding(12, 4, name="embedding_user")(ids)
        h = nn.LayerNorm()(nn.Dense(4)(x) + e)
        img = ConvBNAct(2, kernel_size=1)(h[:, None, None, :], train=train)
        return nn.Dense(1)(img.reshape(img.shape[0], -1))


@functools.lru_cache(maxsize=None)
def _net_params():
    ids, x = jnp.array([1, 3]), jnp.ones((2, 5))
    variables = jax.jit(_Net().init)(jax.random.key(0), ids, x)
    return variables["params"]  # boxed, as the trainer sees them at tx.init


def _one_update(cfg, grads_fn):
    boxed = _net_params()
    params = nn.meta.unbox(boxed)
    tx, _ = make_optimizer(cfg, total_steps=10)
    state = jax.jit(lambda p: nn.meta.unbox(tx.init(p)))(boxed)  # as the trainer does

    @jax.jit
    def step(params, state):
        updates, _ = tx.update(jax.tree.map(grads_fn, params), state, params)
        return optax.apply_updates(params, updates)

    new = step(params, state)
    flat = lambda t: {jax.tree_util.keystr(p): np.asarray(v)  # noqa: E731
                      for p, v in jax.tree_util.tree_leaves_with_path(t)}
    return flat(params), flat(new)


def test_weight_decay_only_moves_kernels():
    cfg = OptimConfig(lr=0.1, weight_decay=0.5, schedule="constant", warmup_steps=0,
                      clip_norm=None)
    old, new = _one_update(cfg, jnp.zeros_like)
    moved = {k for k in old if not np.array_equal(old[k], new[k])}
    assert moved == {k for k in old if k.endswith("['kernel']")}
    assert any("embedding" in k for k in old) and not any("embedding" in k for k in moved)
    for k in moved:  # decoupled decay: p <- p - lr * wd * p
        np.testing.assert_allclose(new[k], old[k] * (1 - 0.1 * 0.5), rtol=1e-6)
    # decay_params=null restores optax's default: every param decays.
    old, new = _one_update(OptimConfig(lr=0.1, weight_decay=0.5, schedule="constant",
                                       warmup_steps=0, clip_norm=None, decay_params=None),
                           jnp.zeros_like)
    assert {k for k in old if not np.array_equal(old[k], new[k])} == {
        k for k in old if np.any(old[k] != 0)}


def test_embedding_group_gets_its_own_optimizer():
    cfg = OptimConfig(lr=1e-3, weight_decay=0.0, schedule="constant", warmup_steps=0,
                      clip_norm=None, embedding={"name": "rowwise_adagrad", "lr": 0.05})
    old, new = _one_update(cfg, jnp.ones_like)
    for k in old:
        step = 0.05 if k.endswith("['embedding']") else 1e-3  # rowwise: g/sqrt(g^2); adam: ~1
        np.testing.assert_allclose(old[k] - new[k], step, rtol=1e-4, err_msg=k)
    with pytest.raises(ValueError, match="optim.embedding.name='rowwise'; valid choices"):
        make_optimizer(OptimConfig(embedding={"name": "rowwise"}), 10)
    with pytest.raises(ValueError, match="unknown optim.embedding keys \\['learning_rate'\\]"):
        OptimConfig(embedding={"learning_rate": 0.1})
    with pytest.raises(ValueError, match="optim.decay_params='\\(' is not a valid regular"):
        make_optimizer(OptimConfig(decay_params="("), 10)


def test_rowwise_adagrad_matches_numpy_reference():
    rng = np.random.default_rng(3)
    rows, dim, lr, eps, init_acc = 6, 4, 0.1, 1e-8, 0.1
    table = rng.normal(size=(rows, dim)).astype(np.float32)
    grads = [rng.normal(size=(rows, dim)).astype(np.float32) for _ in range(2)]
    grads[0][2] = 0.0  # a row not looked up in step 1
    tx = rowwise_adagrad(lr, initial_accumulator_value=init_acc, eps=eps)
    params = {"embedding": jnp.asarray(table)}
    state = tx.init(params)
    assert state[0].sum_of_squares["embedding"].shape == (rows,)  # one accumulator per row
    p_ref, acc_ref = table.astype(np.float64), np.full(rows, init_acc)
    for g in grads:
        updates, state = tx.update({"embedding": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        acc_ref = acc_ref + (g.astype(np.float64) ** 2).mean(axis=1)
        p_ref = p_ref - lr * g / (np.sqrt(acc_ref) + eps)[:, None]
        np.testing.assert_allclose(params["embedding"], p_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state[0].sum_of_squares["embedding"], acc_ref, rtol=1e-5)
    with pytest.raises(ValueError, match="shape \\[rows, ...\\].*optim.embedding.params"):
        tx.init({"embedding": jnp.zeros(3)})


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optim_configs_load_and_build(name):
    node = OmegaConf.load(f"{config_dir()}/optim/{name}.yaml")
    cfg = typed(OptimConfig, node)
    assert cfg.embedding.name is None and cfg.embedding.params == "embedding"
    params = nn.meta.unbox(_net_params())
    for tx, _ in (make_optimizer(cfg, 100), make_optimizer(
            typed(OptimConfig, OmegaConf.merge(node, {"embedding": {"name": "rowwise_adagrad"}})),
            100)):
        updates, _ = jax.eval_shape(tx.update, params, tx.init(params), params)
        assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    assert decay_mask()(params)["Dense_0"] == {"kernel": True, "bias": False}
