"""Two processes on 127.0.0.1 run one data-parallel step with jax.distributed."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import portpicker

from mlsd_jax import sharding as shd
from mlsd_jax import tasks
from mlsd_jax.experiment import typed
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import Trainer, TrainerConfig
from tests.utils import compose_config

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_step_matches_single_process(tmp_path):
    port = portpicker.pick_unused_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "multihost_worker.py"),
                               str(port), str(i), str(tmp_path)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        finally:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(o[-3000:] for o in outs)

    # Same step in this process on 4 of its devices, fed the two slices as one global batch.
    local = [dict(np.load(tmp_path / f"batch_{i}.npz")) for i in range(2)]
    batch = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
    cfg = compose_config(["+task=ranking", "trainer.batch_size=4", "trainer.eval_batch_size=4",
                          "model.dropout=0.0", "model.input_noise=0.0"])
    task = tasks.build(cfg)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1], "num_devices": 4})
    trainer = Trainer(task, typed(TrainerConfig, cfg.trainer), typed(OptimConfig, cfg.optim), mesh)
    state, _ = trainer.train_step(trainer.init_state(), trainer.put_batch(batch), jax.random.key(0))
    want = {"/".join(str(k.key) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]}
    for i in range(2):
        got = dict(np.load(tmp_path / f"params_{i}.npz"))
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
