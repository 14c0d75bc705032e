"""The core never reports a wrong number: divergence, garbage under masks, bad settings, damaged
checkpoints, run dirs of other runs and bad serving inputs stop with one clear line."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mlsd_jax import sharding as shd
from mlsd_jax import tasks
from mlsd_jax.errors import CheckpointError, NonFiniteError
from mlsd_jax.experiment import typed
from mlsd_jax.export import export_model, load_bundle, saved_model_predict
from mlsd_jax.tasks.base import run_forward
from mlsd_jax.training.checkpoint import Checkpoints
from mlsd_jax.training.loggers import JsonlLogger
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import Trainer, TrainerConfig
from tests.utils import TINY, compose_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ranking():
    cfg = compose_config(["+task=ranking"])
    return cfg, tasks.build(cfg)


def make_trainer(cfg, task, **overrides):
    tcfg = typed(TrainerConfig, cfg.trainer)
    for k, v in overrides.items():
        setattr(tcfg, k, v)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1]})
    return Trainer(task, tcfg, typed(OptimConfig, cfg.optim), mesh)


def _poisoned(task, at_step: int):
    """The task whose training batch ``at_step`` (0-based) has a NaN in a real document."""
    inner = task.train_batches

    def batches(seed, start):
        for i, batch in enumerate(inner(seed, start), start):
            if i == at_step:
                batch = {k: np.array(v, copy=True) for k, v in batch.items()}
                batch["features"][0, 0, 3] = np.nan
            yield batch

    return dataclasses.replace(task, train_batches=batches)


def test_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(ranking, tmp_path):
    cfg, task = ranking
    trainer = make_trainer(cfg, _poisoned(task, at_step=2), max_steps=6, eval_every=2,
                           patience=0, max_steps_in_flight=1)
    with pytest.raises(NonFiniteError, match=r"step 3: the training loss is nan") as e:
        trainer.fit(tmp_path)
    assert "NaN/inf in the input features" in str(e.value)
    state, _ = Checkpoints(tmp_path / "checkpoints").restore_latest(trainer.abstract_state)
    assert int(state.step) == 2
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


def _garbage_under_mask(batch):
    """Padding positions filled with NaN/inf features and NaN labels."""
    out = {k: np.array(v, copy=True) for k, v in batch.items()}
    pad = ~out["mask"]
    assert pad.any(), "the batch must have padding to test"
    out["features"][pad] = np.nan
    out["features"][pad & (np.arange(pad.shape[-1]) % 2 == 0)] = np.inf
    out["label"][pad] = np.nan
    return out


def test_garbage_under_the_mask_changes_nothing(ranking, tmp_path):
    cfg, task = ranking
    trainer = make_trainer(cfg, task)
    state = trainer.init_state()
    clean = next(task.eval_splits["valid"]())
    dirty = _garbage_under_mask(clean)
    # Training: loss and gradients.
    rng = jax.random.key(1)
    s1, m1 = trainer.train_step(trainer.init_state(), trainer.put_batch(clean), rng)
    s2, m2 = trainer.train_step(trainer.init_state(), trainer.put_batch(dirty), rng)
    assert np.isfinite(float(m2["train/loss"]))
    np.testing.assert_allclose(float(m1["train/loss"]), float(m2["train/loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(jax.device_get(s1.params)), jax.tree.leaves(jax.device_get(s2.params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Evaluation.
    clean_m = trainer.evaluate_batches(state, [clean])
    dirty_m = trainer.evaluate_batches(state, [dirty])
    assert clean_m == pytest.approx(dirty_m)
    # Serving: the SavedModel and the bundle score real items identically.
    path = export_model(task, state, tmp_path / "export")
    raw = {"features": dirty["features"], "mask": dirty["mask"]}
    served = saved_model_predict(path, raw)["scores"]
    want, _ = run_forward(task.model, task.forward, jax.device_get(state.variables),
                          jax.device_get(state.consts),
                          {"features": clean["features"], "mask": clean["mask"]}, train=False)
    mask = clean["mask"]
    np.testing.assert_allclose(served[mask], np.asarray(want["scores"])[mask], rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(load_bundle(path).predict(raw)["scores"]))


def run_cli(*overrides, timeout=600):
    return subprocess.run([sys.executable, "-m", "experiments.run", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("override,words", [
    ("optim.lr=-1", "optim.lr=-1.0: expected a learning rate > 0"),
    ("trainer.max_steps=0", "trainer.max_steps=0: expected an integer >= 1"),
    ("data.list_size=0", "data.list_size=0: expected an integer >= 1"),
    ("trainer.batch_size=7", "trainer.batch_size=7 must be a multiple of the data-parallel size"),
])
def test_bad_settings_stop_with_one_line(override, words, tmp_path):
    proc = run_cli("+task=ranking", *TINY, override, f"hydra.run.dir={tmp_path}",
                   "mesh.num_devices=2", timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_step(ranking, tmp_path, capsys):
    cfg, task = ranking
    make_trainer(cfg, task, max_steps=4, eval_every=2, patience=0, keep_checkpoints=2).fit(tmp_path)
    newest = tmp_path / "checkpoints" / "latest" / "4"
    damaged = [p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 0
               and "state" in str(p) and "metadata" not in p.name]
    assert damaged
    for p in damaged:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    trainer = make_trainer(cfg, task, max_steps=4, eval_every=2, patience=0)
    state, _ = Checkpoints(tmp_path / "checkpoints").restore_latest(trainer.abstract_state)
    assert int(state.step) == 2
    assert "latest/4 is unreadable" in capsys.readouterr().out


@pytest.mark.slow  # the default suite keeps under 15 minutes
def test_a_run_dir_of_another_model_says_so(ranking, tmp_path):
    cfg, task = ranking
    make_trainer(cfg, task, max_steps=2, eval_every=2).fit(tmp_path)
    other_cfg = compose_config(["+task=ranking", "ranking/model=mlp_ranker"])
    other = tasks.build(other_cfg)
    with pytest.raises(CheckpointError, match="another run .*new hydra.run.dir.*resume=false"):
        make_trainer(other_cfg, other, max_steps=2, eval_every=2).fit(tmp_path)
    fit = make_trainer(other_cfg, other, max_steps=2, eval_every=2, resume=False).fit(tmp_path)
    assert fit.steps_run == 2 and list(tmp_path.glob("checkpoints.old-*"))


@pytest.mark.slow  # the default suite keeps under 15 minutes
def test_a_run_dir_of_other_data_says_so(ranking, tmp_path):
    """Same model and shapes, other data (another validation split -> other fitted feature
    statistics): resuming would silently continue with weights fitted to other features."""
    cfg, task = ranking
    make_trainer(cfg, task, max_steps=2, eval_every=2).fit(tmp_path)
    other_cfg = compose_config(["+task=ranking", "data.seed=1"])
    other = tasks.build(other_cfg)
    with pytest.raises(CheckpointError, match="fitted features / constants differ"):
        make_trainer(other_cfg, other, max_steps=2, eval_every=2).fit(tmp_path)
    # The same config again resumes.
    again = tasks.build(compose_config(["+task=ranking"]))
    fit = make_trainer(cfg, again, max_steps=2, eval_every=2).fit(tmp_path)
    assert fit.steps_run == 0


@pytest.mark.slow  # 20-45 s; the default suite keeps under 15 minutes
def test_resumed_runs_never_log_a_metric_twice(ranking, tmp_path):
    cfg, task = ranking
    logger = JsonlLogger(tmp_path)
    make_trainer(cfg, task, max_steps=4, eval_every=2, patience=0).fit(tmp_path, logger)
    logger.close()
    # A run killed after logging step 5 but before its next checkpoint leaves such a line.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "train/loss": 1.0}) + "\n" + '{"step": 6, "train/lo')
    logger = JsonlLogger(tmp_path)
    make_trainer(cfg, task, max_steps=6, eval_every=2, patience=0).fit(tmp_path, logger)
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    seen = [(r["step"], k) for r in rows for k in r if k != "step"]
    assert len(seen) == len(set(seen))
    assert max(r["step"] for r in rows) == 6


@pytest.fixture(scope="module")
def exported(ranking, tmp_path_factory):
    cfg, task = ranking
    state = make_trainer(cfg, task).init_state()
    return export_model(task, state, tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("features,mask,words", [
    ((1, 4, 10), (1, 4), "features"),
    ((0, 4, 136), (0, 4), "dimension 0 (batch) is empty"),
    ((2, 4, 136), (2, 5), "input mask dimension 1 (list) must equal input features"),
])
def test_savedmodel_and_bundle_name_the_bad_input(exported, features, mask, words):
    import tensorflow as tf

    raw = {"features": np.ones(features, np.float32), "mask": np.ones(mask, bool)}
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)) as e:
        saved_model_predict(exported, raw)
    assert words.split(" (")[0].split(" must")[0] in str(e.value)
    with pytest.raises(ValueError) as e:
        load_bundle(exported).predict(raw)
    assert "features" in str(e.value) or "mask" in str(e.value)


def _letor_lines(n_queries=6, docs=5, bad=None):
    rng = np.random.default_rng(0)
    lines = []
    for q in range(n_queries):
        for d in range(docs):
            feats = " ".join(f"{j}:{rng.random():.3f}" for j in range(1, 11))
            lines.append(f"{int(rng.integers(0, 3))} qid:{q + 1} {feats}")
    if bad:
        lines[7] = bad
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("content,words", [
    (_letor_lines(bad="2 qid:2 1:0.5 2:nan 3:0.1"), "feature 2 is nan"),
    (_letor_lines(bad="1000 qid:2 1:0.5 2:0.2"), "label 1000"),
    (b"\x1f\x8b\x08\x00garbage-that-is-not-gzip", "damaged gzip file"),
    (b"PK\x03\x04\x14\x00\x00\x00zipped", "compressed"),
    (b"\x00\x01\x02binary\xff\xfe", "not a text LETOR file"),
])
def test_bad_data_files_stop_the_cli_with_one_line(content, words, tmp_path):
    data = tmp_path / ("data.gz" if isinstance(content, bytes) and content[:2] == b"\x1f\x8b"
                       else "data.txt")
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    proc = run_cli("+task=ranking", *TINY, f"data.path={data}", f"hydra.run.dir={tmp_path / 'run'}",
                   "data.num_features=10", "mesh.num_devices=2", timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "\\x00" not in proc.stderr
