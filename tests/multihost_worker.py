"""One process of a two-process data-parallel run (started by tests/test_multihost.py).

Usage: python tests/multihost_worker.py PORT PROCESS_ID OUT_DIR STEPS OVERRIDE...
OVERRIDEs are the run's config overrides (the test passes the ones its single-process run uses).
Each process has 2 CPU devices; the global mesh spans 4. The process reads its own slice of the
training stream for STEPS jitted train steps, then evaluates the validation and test splits
across both processes. It saves what it read (its local batches), the per-step losses, the final
parameters (gathered) and the evaluated metrics, so the test can check that the processes read
disjoint data and that the run equals a single-process one.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main(port: str, process_id: str, out_dir: str, steps: str, *overrides: str) -> None:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id),
                               initialization_timeout=120)
    from jax.experimental import multihost_utils

    from mlsd_jax import sharding as shd
    from mlsd_jax import tasks
    from mlsd_jax.experiment import typed
    from mlsd_jax.training.optim import OptimConfig
    from mlsd_jax.training.trainer import Trainer, TrainerConfig
    from tests.utils import compose_config

    assert jax.process_count() == 2 and jax.device_count() == 4
    cfg = compose_config(list(overrides))
    task = tasks.build(cfg)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1]})
    trainer = Trainer(task, typed(TrainerConfig, cfg.trainer), typed(OptimConfig, cfg.optim), mesh)
    state = trainer.init_state()
    rng = jax.random.key(0)
    batches = task.train_batches(0, 0)
    local, losses = [], []
    for _ in range(int(steps)):
        batch = next(batches)
        assert batch["features"].shape[0] * 2 == cfg.trainer.batch_size  # half of it
        local.append(batch)
        state, metrics = trainer.train_step(state, trainer.put_batch(batch), rng)
        losses.append(float(metrics["train/loss"]))
    evals = {}
    for split in ("valid", "test"):
        n_batches = sum(1 for _ in task.eval_splits[split]())
        evals[split] = {"batches": n_batches,
                        "metrics": trainer.evaluate(state, split)}
    params = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                          state.params)
    flat = {"/".join(str(k.key) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(os.path.join(out_dir, f"batches_{process_id}.npz"),
             **{k: np.stack([b[k] for b in local]) for k in local[0]})
    np.savez(os.path.join(out_dir, f"params_{process_id}.npz"), **flat)
    with open(os.path.join(out_dir, f"run_{process_id}.json"), "w") as f:
        json.dump({"losses": losses, "eval": evals}, f)
    print(f"process {process_id}: losses {losses}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
