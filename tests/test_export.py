"""Export: SavedModel and bundle agree for any batch size and list length; the bundle is
self-contained; a failed export leaves nothing behind."""
import json

import jax
import numpy as np
import pytest

from mlsd_jax import sharding as shd
from mlsd_jax import tasks
from mlsd_jax.experiment import typed
from mlsd_jax.export import export_model, load_bundle, load_saved_model, saved_model_predict
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import Trainer, TrainerConfig
from tests.utils import compose_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = compose_config(["+task=ranking"])
    task = tasks.build(cfg)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1]})
    trainer = Trainer(task, typed(TrainerConfig, cfg.trainer), typed(OptimConfig, cfg.optim), mesh)
    state = trainer.init_state()
    batches = task.train_batches(0, 0)
    for _ in range(2):
        state, _ = trainer.train_step(state, trainer.put_batch(next(batches)), jax.random.key(0))
    base = tmp_path_factory.mktemp("export")
    path = export_model(task, state, base, card={"metrics": {"valid/ndcg@10": 0.5}})
    return task, trainer, state, path


def _raw(batch, length, seed):
    rng = np.random.default_rng(seed)
    # Raw, untransformed features on the scale of the real data: the transform is in the graph.
    features = np.abs(rng.standard_t(2, size=(batch, length, 136))).astype(np.float32) * 10
    mask = rng.random((batch, length)) < 0.8
    mask[:, 0] = True
    return {"features": features, "mask": mask}


@pytest.mark.parametrize("batch,length", [(1, 1), (3, 7), (2, 50), (5, 300)])
def test_savedmodel_bundle_and_training_forward_agree(exported, batch, length):
    task, trainer, state, path = exported
    raw = _raw(batch, length, batch * 1000 + length)
    got = saved_model_predict(path, raw)["scores"]
    bundle = load_bundle(path)
    fast = bundle.predict(raw)["scores"]
    # The training-side evaluation path on the same rows.
    from mlsd_jax.tasks.base import run_forward

    want, _ = run_forward(task.model, task.forward, jax.device_get(state.variables),
                          jax.device_get(state.consts), raw, train=False)
    assert got.shape == fast.shape == (batch, length)
    np.testing.assert_allclose(got[raw["mask"]], np.asarray(want["scores"])[raw["mask"]],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast, np.asarray(want["scores"]), rtol=1e-5, atol=1e-5)


def test_bundle_card_is_self_contained(exported):
    task, _, state, path = exported
    assert path.name == "1" and (path / "saved_model.pb").exists()
    card = json.loads((path / "assets.extra" / "mlsd_model.json").read_text())
    assert card["task"] == "ranking" and card["serving"] == "mlsd_jax.tasks.ranking:serving"
    sig = card["signatures"]["serving_default"]
    assert sig["inputs"]["features"] == {"dims": ["batch", "list", 136], "dtype": "float32"}
    assert list(sig["outputs"]) == ["scores"]
    assert card["features"] == {"num_features": 136}
    assert card["config"]["model"]["_target_"].endswith("ListwiseAttentionRanker")
    assert card["metrics"] == {"valid/ndcg@10": 0.5}
    assert {"jax", "flax", "numpy"} <= set(card["libraries"]) and "git_commit" in card
    bundle = load_bundle(path)
    saved = jax.tree.leaves(jax.device_get(state.params))
    assert all(np.array_equal(a, b) for a, b in zip(saved, jax.tree.leaves(bundle.variables["params"])))


def test_versions_count_up_and_a_failed_check_leaves_nothing(exported):
    task, _, state, path = exported
    second = export_model(task, state, path.parent, check=False)
    assert second.name == "2"
    # A check that fails (a negative tolerance cannot be met) must not
    # leave a version folder or a temporary folder behind.
    with pytest.raises(RuntimeError, match="differ"):
        export_model(task, state, path.parent, tolerance=-1.0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["1", "2"]


def test_savedmodel_rejects_wrong_feature_count(exported):
    import tensorflow as tf

    serve = load_saved_model(exported[3])
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        serve(features=tf.zeros((1, 4, 10)), mask=tf.ones((1, 4), tf.bool))


def test_bundle_rejects_wrong_inputs_by_name(exported):
    bundle = load_bundle(exported[3])
    with pytest.raises(KeyError, match="mask"):
        bundle.predict({"features": np.zeros((1, 3, 136), np.float32)})
    with pytest.raises(ValueError, match="features"):
        bundle.predict({"features": np.zeros((1, 3, 10), np.float32), "mask": np.ones((1, 3), bool)})


# ------------------------------------------------- several signatures, independent named dims
import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mlsd_jax.models.embedding import Embedding  # noqa: E402
from mlsd_jax.tasks.base import Serving, Signature, init_variables  # noqa: E402


class TwoTower(nn.Module):
    """A user tower over a history of item ids and an item tower, sharing one id table."""

    items: int = 50
    dim: int = 8

    def setup(self):
        self.table = Embedding(self.items, self.dim)

    def user(self, history, mask):
        return self.table(history, mask)

    def item(self, ids):
        return self.table(ids)

    def __call__(self, history, mask, candidates):
        return jnp.einsum("bd,bcd->bc", self.user(history, mask), self.item(candidates))


def two_tower_forward(apply, consts, inputs, *, train=False):
    return {"scores": apply(inputs["history"], inputs["history_mask"], inputs["candidates"])}


def two_tower_serving(cfg, features):
    ids = lambda *dims: (dims, np.int32)  # noqa: E731
    return Serving(model=TwoTower(), forward=two_tower_forward, signatures={
        "serving_default": Signature(
            inputs={"history": ids("batch", "history"),
                    "history_mask": (("batch", "history"), np.bool_),
                    "candidates": ids("batch", "candidates")},
            outputs={"scores": "float32 [batch, candidates]"},
            predict=lambda apply, c, x: two_tower_forward(apply, c, x)),
        "user": Signature(
            inputs={"history": ids("batch", "history"),
                    "history_mask": (("batch", "history"), np.bool_)},
            outputs={"user": "float32 [batch, 8]"},
            predict=lambda apply, c, x: {"user": apply(x["history"], x["history_mask"],
                                                       method="user")}),
        "item": Signature(inputs={"ids": ids("items")}, outputs={"item": "float32 [items, 8]"},
                          predict=lambda apply, c, x: {"item": apply(x["ids"], method="item")}),
    })


def test_several_signatures_with_independent_named_dims(exported, tmp_path):
    import dataclasses
    from types import SimpleNamespace

    task = exported[0]
    srv = two_tower_serving({}, None)
    rng = np.random.default_rng(0)
    examples = {
        "serving_default": {"history": rng.integers(0, 50, (2, 7)).astype(np.int32),
                            "history_mask": rng.random((2, 7)) < 0.7,
                            "candidates": rng.integers(0, 50, (2, 3)).astype(np.int32)},
        "user": {"history": rng.integers(0, 50, (4, 5)).astype(np.int32),
                 "history_mask": np.ones((4, 5), bool)},
        "item": {"ids": np.arange(11, dtype=np.int32)},
    }
    two = dataclasses.replace(task, name="two_tower", model=srv.model, forward=srv.forward,
                              signatures=srv.signatures,
                              serving="tests.test_export:two_tower_serving",
                              serving_examples=examples, features=None)
    variables = init_variables(srv.model, srv.forward, {}, examples["serving_default"],
                               jax.random.key(0))
    path = export_model(two, SimpleNamespace(variables=variables, consts={}), tmp_path)
    bundle = load_bundle(path)
    # A history of 7 with 3 candidates: the two free lengths are separate symbols.
    got = saved_model_predict(path, examples["serving_default"])["scores"]
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, bundle.predict(examples["serving_default"])["scores"],
                               rtol=1e-5, atol=1e-6)
    user = saved_model_predict(path, examples["user"], "user")["user"]
    item = saved_model_predict(path, examples["item"], "item")["item"]
    assert user.shape == (4, 8) and item.shape == (11, 8)
    np.testing.assert_allclose(item, bundle.predict(examples["item"], "item")["item"], atol=1e-6)
