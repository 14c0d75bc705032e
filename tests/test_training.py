"""Trainer behaviour on the real MSLR sample: sharding equivalence, checkpoints, resume."""
from pathlib import Path

import jax
import numpy as np
import pytest

from mlsd_jax import sharding as shd
from mlsd_jax import tasks
from mlsd_jax.experiment import typed
from mlsd_jax.training.checkpoint import Checkpoints
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import Trainer, TrainerConfig
from tests.utils import compose_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def ranking():
    cfg = compose_config(["+task=ranking"])
    return cfg, tasks.build(cfg)


def make_trainer(cfg, task, num_devices=None, optim=None, mesh_shape=(-1, 1), **trainer_overrides):
    tcfg = typed(TrainerConfig, cfg.trainer)
    for k, v in trainer_overrides.items():
        setattr(tcfg, k, v)
    ocfg = typed(OptimConfig, cfg.optim)
    for k, v in (optim or {}).items():
        setattr(ocfg, k, v)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": list(mesh_shape),
                          "num_devices": num_devices})
    return Trainer(task, tcfg, ocfg, mesh)


def run_steps(trainer, n):
    state = trainer.init_state()
    rng = jax.random.key(0)
    batches = trainer.task.train_batches(0, 0)
    for _ in range(n):
        state, _ = trainer.train_step(state, trainer.put_batch(next(batches)), rng)
    return jax.device_get(state.params)


def test_eight_devices_match_one(ranking):
    cfg, task = ranking
    p8 = run_steps(make_trainer(cfg, task), 3)
    p1 = run_steps(make_trainer(cfg, task, num_devices=1), 3)
    flat8, flat1 = jax.tree.leaves(p8), jax.tree.leaves(p1)
    assert len(flat8) == len(flat1) > 0
    for a, b in zip(flat8, flat1):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    # Three steps really moved the parameters (the comparison is not between two inits).
    p0 = jax.device_get(make_trainer(cfg, task).init_state().params)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p0), flat8))


def test_tensor_parallel_mesh_matches_data_parallel(ranking):
    cfg, task = ranking
    trainer = make_trainer(cfg, task, mesh_shape=(4, 2))
    # The wide layers really are split over the "model" axis.
    kernel = trainer.init_state().params["MLP_0"]["Dense_0"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    p42 = run_steps(trainer, 2)
    p81 = run_steps(make_trainer(cfg, task), 2)
    for a, b in zip(jax.tree.leaves(p42), jax.tree.leaves(p81)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_train_state_is_sharded_over_the_mesh(ranking):
    cfg, task = ranking
    trainer = make_trainer(cfg, task)
    batch = trainer.put_batch(next(task.train_batches(0, 0)))
    assert len(batch["features"].sharding.device_set) == 8
    assert batch["features"].sharding.spec[0] == "data"


def test_checkpoint_restores_on_other_device_counts(ranking, tmp_path):
    cfg, task = ranking
    trainer8 = make_trainer(cfg, task, max_steps=2, eval_every=2)
    fit = trainer8.fit(tmp_path)
    want = jax.device_get(Checkpoints(tmp_path / "checkpoints").restore_latest(
        trainer8.abstract_state)[0])
    for n in (2, 1):
        trainer = make_trainer(cfg, task, num_devices=n)
        state, meta = Checkpoints(tmp_path / "checkpoints").restore_latest(trainer.abstract_state)
        leaf = jax.tree.leaves(state.params)[0]
        assert len(leaf.sharding.device_set) == n
        assert int(state.step) == 2 and meta["best_step"] == fit.best_step
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(jax.device_get(state))):
            np.testing.assert_array_equal(a, b)


def test_resume_continues_where_it_stopped(ranking, tmp_path):
    cfg, task = ranking
    # A constant schedule, so a run cut at step 3 of 6 saw the same learning rates.
    const = {"schedule": "constant", "warmup_steps": 0}
    kw = dict(eval_every=3, patience=0, optim=const)
    straight = make_trainer(cfg, task, max_steps=6, **kw).fit(tmp_path / "a")
    make_trainer(cfg, task, max_steps=3, **kw).fit(tmp_path / "b")
    resumed = make_trainer(cfg, task, max_steps=6, **kw).fit(tmp_path / "b")
    assert resumed.steps_run == 3
    for a, b in zip(jax.tree.leaves(jax.device_get(straight.state.params)),
                    jax.tree.leaves(jax.device_get(resumed.state.params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_early_stopping_and_best_checkpoint(ranking, tmp_path):
    cfg, task = ranking
    # lr=0 never improves after the first evaluation: patience 2 stops after 3 evaluations.
    optim = typed(OptimConfig, cfg.optim)
    optim.lr = 0.0
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1]})
    tcfg = typed(TrainerConfig, cfg.trainer)
    tcfg.max_steps, tcfg.eval_every, tcfg.patience = 20, 1, 2
    fit = Trainer(task, tcfg, optim, mesh).fit(tmp_path)
    assert fit.stopped_early and fit.steps_run == 3 and fit.best_step == 1
    assert "eval/ndcg@10" in fit.metrics and "valid/ndcg@10" in fit.metrics


def test_batch_size_must_divide_over_devices(ranking):
    cfg, task = ranking
    with pytest.raises(ValueError, match="multiple of the data-parallel size 8"):
        make_trainer(cfg, task, batch_size=6)


@pytest.mark.parametrize("task_file", sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml")))
def test_every_task_runs_one_step(task_file, tmp_path):
    cfg = compose_config([f"+task={task_file}", "trainer.max_steps=1", "trainer.eval_every=1"])
    task = tasks.build(cfg)
    fit = make_trainer(cfg, task, max_steps=1, eval_every=1).fit(tmp_path)
    assert fit.steps_run == 1
    assert all(np.isfinite(v) for v in fit.metrics.values())


def test_letor_fold_from_data_path(tmp_path):
    """data.path=<fold folder> (MSLR layout) trains through the same task code."""
    from mlsd_jax.data.fetch import fetch_packaged
    from mlsd_jax.data.ranking import MSLR_SAMPLE_TEST, MSLR_SAMPLE_TRAIN

    train_lines = fetch_packaged(MSLR_SAMPLE_TRAIN).read_text().splitlines(keepends=True)
    qids = sorted({line.split()[1] for line in train_lines}, key=lambda q: int(q[4:]))
    vali = set(qids[:8])
    fold = tmp_path / "Fold1"
    fold.mkdir()
    (fold / "train.txt").write_text("".join(l for l in train_lines if l.split()[1] not in vali))
    (fold / "vali.txt").write_text("".join(l for l in train_lines if l.split()[1] in vali))
    (fold / "test.txt").write_text(fetch_packaged(MSLR_SAMPLE_TEST).read_text())
    cfg = compose_config(["+task=ranking", "data=letor", f"data.path={fold}"])
    task = tasks.build(cfg)
    assert task.info["train_queries"] == 35 and task.info["valid_queries"] == 8
    assert task.info["test_queries"] == 43 and task.info["num_features"] == 136
    fit = make_trainer(cfg, task, max_steps=2, eval_every=2).fit(tmp_path / "run")
    assert 0.0 <= fit.metrics["eval/ndcg@10"] <= 1.0


def test_missing_validation_split_is_a_clear_error():
    cfg = compose_config(["+task=ranking", "data.valid_fraction=0"])
    task = tasks.build(cfg)
    with pytest.raises(ValueError, match="trainer.eval_split='valid' has no data"):
        make_trainer(cfg, task)


def test_letor_without_path_names_the_setting():
    with pytest.raises(ValueError, match="data=letor needs data.path="):
        tasks.build(compose_config(["+task=ranking", "data=letor"]))
