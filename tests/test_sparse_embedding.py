"""Sparse embedding updates: same result as the dense row-wise optimizer, without a dense gradient.

A toy task looks one table up twice (a history and a candidate, different shapes, repeated and
out-of-vocabulary ids) and another once, then trains with the core trainer on 8 simulated
devices, tables row-sharded over ``model``.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlsd_jax import sharding as shd
from mlsd_jax.models import Embedding, masked_pool
from mlsd_jax.tasks.base import Signature, Task
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import Trainer, TrainerConfig

B, H = 16, 6


class Toy(nn.Module):
    items: int
    users: int = 50
    dim: int = 8

    @nn.compact
    def __call__(self, user, history, mask, item):
        items = Embedding(self.items, self.dim, name="item")
        u = Embedding(self.users, self.dim, name="user")(user)
        h = masked_pool(items(history), mask)
        c = items(item)
        x = nn.Dense(self.dim, name="mix")(jnp.concatenate([u, h], -1))
        return jnp.sum(x * c, -1)


def _batches(items, seed=0):
    rng = np.random.default_rng(seed)
    while True:
        yield {"user": rng.integers(-2, 55, B).astype(np.int32),  # some OOV
               "history": rng.integers(0, 12, (B, H)).astype(np.int32),  # many repeats
               "mask": rng.random((B, H)) < 0.7,
               "item": rng.integers(0, items + 3, B).astype(np.int32),
               "label": rng.integers(0, 2, B).astype(np.float32)}


def _task(items):
    model = Toy(items)
    keys = ("user", "history", "mask", "item")

    def forward(apply, consts, inputs, *, train):
        return {"logit": apply(*(inputs[k] for k in keys))}

    def loss_fn(outputs, batch):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(outputs["logit"], batch["label"]))

    example = next(_batches(items))
    sig = Signature(inputs={k: (("batch",) + (("history",) if k in ("history", "mask") else ()),
                                bool if k == "mask" else np.int32) for k in keys},
                    outputs={"logit": "score"}, predict=lambda a, c, x: forward(a, c, x, train=False))
    return Task(name="toy", model=model, consts={}, forward=forward, loss_fn=loss_fn, metrics={},
                example_weight=lambda b: jnp.ones(b["label"].shape), eval_splits={},
                train_batches=lambda seed, start: _batches(items, seed), example_batch=example,
                input_keys=keys, signatures={"serving_default": sig}, serving="", target_metric="loss")


def _trainer(items, sparse, mesh_shape, clip=1.0, name="rowwise_adagrad"):
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": mesh_shape})
    optim = OptimConfig(lr=1e-2, warmup_steps=0, clip_norm=clip,
                        embedding={"name": name, "lr": 0.1, "sparse": sparse})
    cfg = TrainerConfig(max_steps=5, batch_size=B, eval_every=0, progress=False)
    return Trainer(_task(items), cfg, optim, mesh)


def _train(trainer, steps=5):
    state = trainer.init_state()
    it = _batches(trainer.task.model.items, seed=1)
    for _ in range(steps):
        state, metrics = trainer.train_step(state, trainer.put_batch(next(it)), jax.random.key(0))
    return state, metrics


@pytest.mark.parametrize("mesh_shape,clip,name", [([8, 1], 1.0, "rowwise_adagrad"),
                                                  ([2, 4], 0.05, "rowwise_adagrad"),
                                                  ([4, 2], None, "sgd")])
def test_sparse_rows_match_the_dense_optimizer(mesh_shape, clip, name):
    dense_state, dense_m = _train(_trainer(100, False, mesh_shape, clip, name))
    sparse_state, sparse_m = _train(_trainer(100, True, mesh_shape, clip, name))
    np.testing.assert_allclose(sparse_m["train/grad_norm"], dense_m["train/grad_norm"], rtol=1e-5)
    flat_d = jax.tree_util.tree_leaves_with_path(jax.device_get(dense_state.params))
    flat_s = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(sparse_state.params)))
    for path, value in flat_d:
        np.testing.assert_allclose(flat_s[path], value, rtol=2e-5, atol=1e-6, err_msg=str(path))
    table = sparse_state.params["item"]["embedding"]
    assert table.sharding.spec == jax.sharding.PartitionSpec("model", None)
    if name == "rowwise_adagrad":
        acc = sparse_state.opt_state["rows"]["item"]["embedding"]
        assert acc.shape == (table.shape[0],) and acc.sharding.spec[0] == "model"
        assert np.count_nonzero(np.asarray(acc)) > 0
    # Rows never looked up did not move; looked-up rows did.
    init = jax.device_get(_trainer(100, True, mesh_shape, clip, name).init_state().params)
    it = _batches(100, seed=1)
    seen = np.unique(np.concatenate([np.r_[b["history"].ravel(), np.clip(b["item"], 0, 100)]
                                     for b in (next(it) for _ in range(5))]))
    moved = np.any(np.asarray(table) != init["item"]["embedding"], axis=1)
    assert set(np.flatnonzero(moved)) == set(seen.tolist())


@pytest.mark.parametrize("sparse", [False, True])
def test_a_non_finite_step_leaves_params_and_optimizer_state_exactly_as_they_were(sparse):
    trainer = _trainer(100, sparse, [2, 4])
    state, _ = _train(trainer, steps=2)  # non-zero moments: a zero-gradient update would move
    before = jax.device_get((state.params, state.opt_state, state.model_state))
    bad = dict(next(_batches(100, seed=7)))
    bad["label"] = np.full_like(bad["label"], np.nan)
    state, metrics = trainer.train_step(state, trainer.put_batch(bad), jax.random.key(0))
    assert not bool(metrics["train/finite"]) and np.isnan(float(metrics["train/loss"]))
    assert int(state.step) == 3
    after = jax.device_get((state.params, state.opt_state, state.model_state))
    assert jax.tree.structure(after) == jax.tree.structure(before)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)  # bit for bit
    # The next finite step trains on from there.
    state, metrics = trainer.train_step(state, trainer.put_batch(next(_batches(100, seed=8))),
                                        jax.random.key(0))
    assert bool(metrics["train/finite"])
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(before[0]), jax.tree.leaves(jax.device_get(state.params))))


def test_no_dense_table_gradient_in_the_compiled_step():
    rows = 1 << 20  # a 32 MiB table (dim 8)
    table_bytes = (rows + 8) * 8 * 4
    temp = {}
    for sparse in (False, True):
        trainer = _trainer(rows, sparse, [8, 1])
        state = jax.eval_shape(trainer.init_state)
        batch = trainer.put_batch(next(_batches(rows)))
        compiled = trainer.train_step.lower(state, batch, jax.random.key(0)).compile()
        temp[sparse] = compiled.memory_analysis().temp_size_in_bytes
    print(f"step temp bytes: dense {temp[False]:,}, sparse {temp[True]:,}; table {table_bytes:,}")
    assert temp[False] >= table_bytes          # the dense step builds a table-sized gradient
    assert temp[True] < table_bytes / 8        # the sparse step touches looked-up rows only


def test_a_table_read_outside_embedding_is_an_error():
    class Bad(Toy):
        @nn.compact
        def __call__(self, user, history, mask, item):
            nn.Embed(10, 4, name="raw")(item % 10)  # flax's table: not tracked row by row
            return super().__call__(user, history, mask, item)

    trainer = _trainer(100, True, [8, 1])
    task = trainer.task
    bad = Task(**{**{f: getattr(task, f) for f in task.__dataclass_fields__}, "model": Bad(100)})
    trainer = Trainer(bad, trainer.cfg, trainer.optim, trainer.mesh)
    with pytest.raises(ValueError, match="raw/embedding.*not looked up through"):
        trainer.train_step(trainer.init_state(), trainer.put_batch(next(_batches(100))),
                           jax.random.key(0))


def test_sparse_needs_a_row_optimizer():
    with pytest.raises(ValueError, match="optim.embedding.sparse=true needs"):
        OptimConfig(embedding={"name": "adam", "sparse": True})
