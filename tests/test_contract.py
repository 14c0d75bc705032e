"""The core contract on two kinds of task: ranking (lists) and tabular (raw string columns).

Model selection reads validation only; model state (BatchNorm) trains, checkpoints, restores
onto another device count and exports; the same raw rows give the same outputs through the
training path, the bundle and the SavedModel; loss aux values are logged.
"""
import dataclasses
import json

import jax
import numpy as np
import pytest

from mlsd_jax import sharding as shd
from mlsd_jax import tasks
from mlsd_jax.experiment import run, typed
from mlsd_jax.export import export_model, load_bundle, saved_model_predict
from mlsd_jax.tasks.base import run_forward
from mlsd_jax.training.checkpoint import Checkpoints
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import Trainer, TrainerConfig
from tests.utils import compose_config


def make_trainer(cfg, task, num_devices=None, mesh_shape=(-1, 1), **overrides):
    tcfg = typed(TrainerConfig, cfg.trainer)
    for k, v in overrides.items():
        setattr(tcfg, k, v)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": list(mesh_shape),
                          "num_devices": num_devices})
    return Trainer(task, tcfg, typed(OptimConfig, cfg.optim), mesh)


# ------------------------------------------------------------------------- honest split names
def _with_scrambled_test(task):
    """The same task whose test split has its labels reversed: only test metrics may change."""
    original = task.eval_splits["test"]

    def scrambled():
        for batch in original():
            batch = dict(batch)
            batch["label"] = batch["label"][:, ::-1].copy()
            yield batch

    return dataclasses.replace(task, eval_splits={**task.eval_splits, "test": scrambled})


@pytest.mark.slow  # the default suite keeps under 15 minutes
def test_model_selection_never_reads_the_test_split(tmp_path):
    cfg = compose_config(["+task=ranking", "trainer.max_steps=6", "trainer.eval_every=2",
                          "trainer.patience=2"])
    task = tasks.build(cfg)
    calls = []

    def recording(split, inner):
        def batches():
            calls.append(split)
            yield from inner()
        return batches

    task = dataclasses.replace(task, eval_splits={
        s: recording(s, fn) for s, fn in task.eval_splits.items()})
    fit = make_trainer(cfg, task).fit(tmp_path / "a")
    # The test split is read exactly once, after every validation-driven decision.
    assert calls.count("test") == 1 and calls[-1] == "test" and calls[-2] == "valid"
    other = make_trainer(cfg, _with_scrambled_test(task)).fit(tmp_path / "b")
    assert other.best_step == fit.best_step and other.best_metric == fit.best_metric
    for a, b in zip(jax.tree.leaves(jax.device_get(fit.state.params)),
                    jax.tree.leaves(jax.device_get(other.state.params))):
        np.testing.assert_array_equal(a, b)
    assert other.metrics["test/ndcg@10"] != fit.metrics["test/ndcg@10"]
    assert not any(k.startswith("eval/") for k in fit.metrics)


def test_entry_point_returns_the_validation_objective(tmp_path):
    from experiments.run import main

    cfg = compose_config(["+task=ranking"])
    results = run(cfg, workdir=tmp_path)
    assert results["objective"]["name"] == "valid/ndcg@10"
    assert results["objective"]["value"] == pytest.approx(results["metrics"]["valid/ndcg@10"])
    # What a Hydra sweeper optimises is the same validation number (the undecorated main; the
    # same run dir, so it resumes the finished run instead of training again).
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.workdir = str(tmp_path)
    assert main.__wrapped__(cfg) == pytest.approx(results["metrics"]["valid/ndcg@10"])


# ----------------------------------------------------------------------- tabular, model state
@pytest.fixture(scope="module")
def tabular_bn():
    cfg = compose_config(["+task=tabular", "tabular/model=tabular_net_bn"])
    return cfg, tasks.build(cfg)


def test_batchnorm_state_trains_checkpoints_restores_and_exports(tabular_bn, tmp_path):
    cfg, task = tabular_bn
    trainer = make_trainer(cfg, task, max_steps=2, eval_every=2)
    init = jax.device_get(trainer.init_state().model_state)
    assert "batch_stats" in init
    fit = trainer.fit(tmp_path)
    saved = jax.device_get(Checkpoints(tmp_path / "checkpoints").restore_latest(
        trainer.abstract_state)[0])
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(init),
                                                  jax.tree.leaves(saved.model_state))]
    assert any(moved), "training must update the BatchNorm statistics"
    one = make_trainer(cfg, task, num_devices=1)
    state, _ = Checkpoints(tmp_path / "checkpoints").restore_latest(one.abstract_state)
    assert len(jax.tree.leaves(state.model_state)[0].sharding.device_set) == 1
    for a, b in zip(jax.tree.leaves(saved.model_state), jax.tree.leaves(jax.device_get(state.model_state))):
        np.testing.assert_array_equal(a, b)
    path = export_model(task, fit.state, tmp_path / "export")
    bundle = load_bundle(path)
    for a, b in zip(jax.tree.leaves(jax.device_get(fit.state.model_state)),
                    jax.tree.leaves(bundle.variables["batch_stats"])):
        np.testing.assert_array_equal(a, b)


def _awkward_rows(task):
    """Real rows plus unseen categories, missing markers and NaN numbers, as a client sends."""
    raw = {k: np.array(v, copy=True) for k, v in task.serving_examples["serving_default"].items()}
    raw["workclass"][0] = "?"
    raw["education"][1] = "Never-seen-degree"
    raw["native_country"][2] = ""
    raw["age"] = raw["age"].astype(np.float64)
    raw["age"][3] = np.nan
    raw["occupation"][4] = "Ünïcödé 🚀"
    return raw


def test_training_bundle_and_savedmodel_agree_on_raw_rows(tabular_bn, tmp_path):
    cfg, task = tabular_bn
    trainer = make_trainer(cfg, task, max_steps=3, eval_every=3)
    fit = trainer.fit(tmp_path)
    path = export_model(task, fit.state, tmp_path / "export")
    raw = _awkward_rows(task)
    bundle = load_bundle(path)
    # The training path: the task's own host encoder, then the jitted forward.
    sig = task.signatures["serving_default"]
    encoded = sig.encode_np(raw)
    train_side, _ = run_forward(task.model, task.forward, jax.device_get(fit.state.variables),
                                jax.device_get(fit.state.consts), encoded, train=False)
    served = saved_model_predict(path, raw)
    fast = bundle.predict(raw)
    for key in ("prob", "logit"):
        np.testing.assert_allclose(fast[key], np.asarray(train_side[key]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(served[key], fast[key], rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(served["prob"]))


def test_loss_aux_is_logged(tmp_path):
    cfg = compose_config(["+task=tabular"])
    run(cfg, workdir=tmp_path)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train/positive_rate_pred" in r for r in rows)
    card = json.loads((tmp_path / "results.json").read_text())
    assert card["objective"]["name"] == "valid/auc"


def test_a_task_evaluator_replaces_the_metric_loop(tmp_path):
    """E.g. retrieval: encode the catalogue once per evaluation instead of per batch."""
    cfg = compose_config(["+task=ranking", "trainer.max_steps=2", "trainer.eval_every=2"])
    seen = []

    def evaluator(trainer, state, split):
        seen.append((split, int(state.step)))
        default = trainer.evaluate_batches(state, trainer.task.eval_splits[split]())
        return {**default, "catalogue_size": 42.0}

    task = dataclasses.replace(tasks.build(cfg), evaluator=evaluator)
    fit = make_trainer(cfg, task).fit(tmp_path)
    assert ("valid", 2) in seen and ("test", 2) in seen
    assert fit.metrics["test/catalogue_size"] == 42.0 and "valid/ndcg@10" in fit.metrics
