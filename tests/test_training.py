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
    # SGD, not Adam: ranking losses are shift-invariant, so the output bias has a zero true
    # gradient whose rounding noise Adam would scale up to a full step on either layout.
    sgd = {"name": "sgd", "lr": 0.05}
    p8 = run_steps(make_trainer(cfg, task, optim=sgd), 3)
    p1 = run_steps(make_trainer(cfg, task, num_devices=1, optim=sgd), 3)
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


def test_checkpoint_restores_on_other_device_counts(tmp_path):
    """A state split over a [data 2, model 4] mesh restores onto 2 devices (data parallel and
    model-split) and onto 1, equal to what was saved, bit for bit."""
    cfg = compose_config(["+task=ranking", "model.num_heads=4"])  # heads split 4 ways too
    task = tasks.build(cfg)
    trainer8 = make_trainer(cfg, task, mesh_shape=(2, 4))
    state = trainer8.init_state()
    batches = task.train_batches(0, 0)
    for _ in range(2):
        state, _ = trainer8.train_step(state, trainer8.put_batch(next(batches)), jax.random.key(0))
    # The wide layers' kernels really are split 4 ways over "model" (and Adam's moments with them).
    split = [(jax.tree_util.keystr(path), leaf) for path, leaf in
             jax.tree_util.tree_flatten_with_path(state)[0]
             if "model" in tuple(leaf.sharding.spec)]
    names = [name for name, _ in split]
    assert any("params" in n and "kernel" in n for n in names), names
    assert any("opt_state" in n for n in names), names
    for name, leaf in split:
        assert len(leaf.sharding.device_set) == 8
        shard = leaf.addressable_shards[0].data.shape
        assert shard != leaf.shape and np.prod(shard) * 4 == np.prod(leaf.shape), (name, shard)
    saved = jax.device_get(state)  # what is written, taken before saving
    ckpt = Checkpoints(tmp_path / "checkpoints")
    ckpt.save(2, state, {"best_step": 2, "note": "saved on 8 devices"})
    ckpt.close()
    want = jax.tree.leaves(saved)
    for n, shape in ((2, (1, 2)), (2, (-1, 1)), (1, (-1, 1))):
        trainer = make_trainer(cfg, task, num_devices=n, mesh_shape=shape)
        restored = Checkpoints(tmp_path / "checkpoints").restore_latest(trainer.abstract_state)
        state_n, meta = restored
        assert meta == {"best_step": 2, "note": "saved on 8 devices"}
        kernel = state_n.params["MLP_0"]["Dense_0"]["kernel"]
        assert len(kernel.sharding.device_set) == n
        split_now = kernel.addressable_shards[0].data.shape != kernel.shape
        assert split_now == (shape[1] > 1)  # split 2 ways on the [1, 2] mesh, whole elsewhere
        assert int(state_n.step) == 2
        got = jax.tree.leaves(jax.device_get(state_n))
        assert len(got) == len(want) > 0
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(saved)[0], got):
            np.testing.assert_array_equal(b, a, err_msg=jax.tree_util.keystr(path))


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
    assert "test/ndcg@10" in fit.metrics and "valid/ndcg@10" in fit.metrics


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
    cfg = compose_config(["+task=ranking", "ranking/data=letor", f"data.path={fold}"])
    task = tasks.build(cfg)
    assert task.info["train_queries"] == 35 and task.info["valid_queries"] == 8
    assert task.info["test_queries"] == 43 and task.info["num_features"] == 136
    fit = make_trainer(cfg, task, max_steps=2, eval_every=2).fit(tmp_path / "run")
    assert 0.0 <= fit.metrics["test/ndcg@10"] <= 1.0


def test_missing_validation_split_is_a_clear_error():
    cfg = compose_config(["+task=ranking", "data.valid_fraction=0"])
    task = tasks.build(cfg)
    with pytest.raises(ValueError, match="trainer.eval_split='valid' has no data"):
        make_trainer(cfg, task)


def test_letor_without_path_names_the_setting():
    with pytest.raises(ValueError, match="data=letor needs data.path="):
        tasks.build(compose_config(["+task=ranking", "ranking/data=letor"]))


def test_prefetched_loop_equals_the_synchronous_one(ranking, tmp_path):
    """Steps in flight with a device-prefetch thread change timing, never results."""
    cfg, task = ranking
    kw = dict(num_devices=1, max_steps=4, eval_every=2, patience=0)
    sync = make_trainer(cfg, task, max_steps_in_flight=1, **kw).fit(tmp_path / "a")
    ahead = make_trainer(cfg, task, max_steps_in_flight=4, prefetch_batches=3, **kw).fit(tmp_path / "b")
    for a, b in zip(jax.tree.leaves(jax.device_get(sync.state.params)),
                    jax.tree.leaves(jax.device_get(ahead.state.params))):
        np.testing.assert_array_equal(a, b)


def test_an_input_error_in_the_prefetch_thread_reaches_the_loop(ranking, tmp_path):
    import dataclasses

    cfg, task = ranking

    def broken(seed, start):
        yield next(task.train_batches(seed, start))
        raise OSError("disk went away")

    bad = dataclasses.replace(task, train_batches=broken)
    with pytest.raises(OSError, match="disk went away"):
        make_trainer(cfg, bad, num_devices=1, max_steps=4, eval_every=0,
                     max_steps_in_flight=4).fit(tmp_path)
