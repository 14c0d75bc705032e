"""Two processes on 127.0.0.1 train and evaluate with jax.distributed, as one process would.

The processes must read disjoint slices of each global batch (together: the single-process
batch, and the whole training split over an epoch), reach the same losses and parameters as a
single-process run on the same global batches, and evaluate to the single-process metrics.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest

from mlsd_jax import sharding as shd
from mlsd_jax import tasks
from mlsd_jax.data.ranking import load_ranking_splits
from mlsd_jax.experiment import typed
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import Trainer, TrainerConfig
from tests.test_lists import Locator
from tests.utils import compose_config

# Two worker processes train, evaluate and checkpoint (about 20-40 s): in the slow suite, which CI
# runs too, so the default suite keeps under 15 minutes.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS = 9  # 9 x 4 lists: the 34 training queries of epoch 0 and two of epoch 1
# Global batches: 4 training lists (2 per process), 8 evaluation lists; no randomness in the
# model. Plain SGD at a constant rate: Adam would turn rounding-level gradients (the output bias
# of a shift-invariant ranking loss) into full-size steps, which no tolerance could compare.
OVERRIDES = ["+task=ranking", "trainer.batch_size=4", "trainer.eval_batch_size=8",
             "model.dropout=0.0", "model.input_noise=0.0", "optim=sgd", "optim.schedule=constant",
             "optim.warmup_steps=0"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihost")
    port = portpicker.pick_unused_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "multihost_worker.py"),
                               str(port), str(i), str(out), str(STEPS), *OVERRIDES],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        finally:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(o[-3000:] for o in outs)
    return [{"batches": dict(np.load(out / f"batches_{i}.npz")),
             "params": dict(np.load(out / f"params_{i}.npz")),
             **json.loads((out / f"run_{i}.json").read_text())} for i in range(2)]


def flat_params(params):
    return {"/".join(str(k.key) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}


@pytest.fixture(scope="module")
def single_process_run():
    """The same run in this process, on 4 of its devices, reading the global batches."""
    cfg = compose_config(OVERRIDES)
    task = tasks.build(cfg)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1], "num_devices": 4})
    trainer = Trainer(task, typed(TrainerConfig, cfg.trainer), typed(OptimConfig, cfg.optim), mesh)
    state = trainer.init_state()
    init = flat_params(state.params)
    batches = task.train_batches(0, 0)
    seen, losses = [], []
    for _ in range(STEPS):
        batch = next(batches)
        seen.append(batch)
        state, metrics = trainer.train_step(state, trainer.put_batch(batch), jax.random.key(0))
        losses.append(float(metrics["train/loss"]))
    evals = {s: {"batches": sum(1 for _ in task.eval_splits[s]()),
                 "metrics": trainer.evaluate(state, s)}
             for s in ("valid", "test")}
    return {"init": init, "params": flat_params(state.params), "losses": losses, "eval": evals,
            "batches": {k: np.stack([b[k] for b in seen]) for k in seen[0]}}


def test_processes_read_disjoint_slices_that_cover_the_split(two_process_run, single_process_run):
    train = load_ranking_splits("mslr_sample")["train"]
    locate = Locator(train)
    local = [r["batches"] for r in two_process_run]
    assert local[0]["features"].shape[:2] == local[1]["features"].shape[:2] == (STEPS, 2)
    # Which query each list of each process came from, found by its documents' content.
    queries = [[[locate(b["features"][s, r], b["label"][s, r], b["mask"][s, r])[0]
                 for r in range(2)] for s in range(STEPS)] for b in local]
    stream = [q for s in range(STEPS) for p in range(2) for q in queries[p][s]]  # global order
    Q = len(train)
    assert sorted(stream[:Q]) == list(range(Q))  # epoch 0: every training query exactly once
    epoch0 = [{q for s in range(STEPS) for r, q in enumerate(queries[p][s])
               if 4 * s + 2 * p + r < Q} for p in range(2)]  # global record index < Q
    assert not epoch0[0] & epoch0[1] and len(epoch0[0]) + len(epoch0[1]) == Q
    # The two slices of each step, in process order, are the single-process global batch.
    for k, want in single_process_run["batches"].items():
        np.testing.assert_array_equal(np.concatenate([local[0][k], local[1][k]], axis=1), want,
                                      err_msg=k)


def test_two_process_training_matches_single_process(two_process_run, single_process_run):
    want = single_process_run
    for run in two_process_run:
        np.testing.assert_allclose(run["losses"], want["losses"], rtol=1e-5, atol=1e-6)
        assert run["params"].keys() == want["params"].keys()
        for k in want["params"]:
            np.testing.assert_allclose(run["params"][k], want["params"][k], rtol=1e-5, atol=1e-6,
                                       err_msg=k)
    assert len(set(want["losses"])) > 1  # nine different batches
    moved = [np.abs(want["params"][k] - want["init"][k]).max() for k in want["params"]
             if k.endswith("kernel")]
    assert min(moved) > 1e-4  # every layer really trained: the comparison is not init vs init


def test_two_process_evaluation_matches_single_process(two_process_run, single_process_run):
    want = single_process_run["eval"]
    # 9 validation and 43 test queries in global batches of 8: both processes step through
    # 2 and 6 batches (the last ones padded, process 1's last validation slice all padding).
    assert {s: e["batches"] for s, e in want.items()} == {"valid": 2, "test": 6}
    for run in two_process_run:
        for split, ev in want.items():
            assert run["eval"][split]["batches"] == ev["batches"]
            got, ref = run["eval"][split]["metrics"], ev["metrics"]
            assert got.keys() == ref.keys() and len(ref) > 0
            for k in ref:
                assert 0.0 < ref[k] <= 1.0, (k, ref[k])
                np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, err_msg=f"{split} {k}")
