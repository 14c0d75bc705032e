"""SavedModel export: reloaded in TensorFlow, it matches JAX for any batch size and list length."""
import json

import jax
import numpy as np
import pytest
import tensorflow as tf  # the [test] extra installs tensorflow-cpu

from mlsd_jax import sharding as shd
from mlsd_jax import tasks
from mlsd_jax.experiment import typed
from mlsd_jax.export import export_saved_model, load_saved_model
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
    path = export_saved_model(task, state.params, state.consts, base)
    return task, jax.device_get(state.params), jax.device_get(state.consts), path


@pytest.mark.parametrize("batch,length", [(1, 1), (3, 7), (2, 50), (5, 300)])
def test_savedmodel_matches_jax(exported, batch, length):
    task, params, consts, path = exported
    rng = np.random.default_rng(batch * 1000 + length)
    # Raw, untransformed features on the scale of the real data: the transform is in the graph.
    features = np.abs(rng.standard_t(2, size=(batch, length, 136))).astype(np.float32) * 10
    mask = rng.random((batch, length)) < 0.8
    mask[:, 0] = True
    serve = load_saved_model(path)
    got = serve(features=tf.constant(features), mask=tf.constant(mask))["scores"].numpy()
    want = np.asarray(task.predict(params, consts, {"features": features, "mask": mask}))
    assert got.shape == (batch, length)
    np.testing.assert_allclose(got[mask], want[mask], rtol=1e-4, atol=1e-4)


def test_export_layout_and_metadata(exported):
    task, params, consts, path = exported
    assert path.name == "1" and (path / "saved_model.pb").exists()
    meta = json.loads((path / "assets.extra" / "mlsd_model.json").read_text())
    assert meta["task"] == "ranking" and meta["inputs"]["features"]["shape"] == [None, None, 136]
    second = export_saved_model(task, params, consts, path.parent, check=False)
    assert second.name == "2"


def test_export_rejects_wrong_feature_count(exported):
    _, _, _, path = exported
    serve = load_saved_model(path)
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        serve(features=tf.zeros((1, 4, 10)), mask=tf.ones((1, 4), tf.bool))
