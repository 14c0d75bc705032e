"""One process of a two-process data-parallel step (run by tests/test_multihost.py).

Usage: python tests/multihost_worker.py PORT PROCESS_ID OUT_DIR
Each process has 2 CPU devices; the global mesh spans 4. The process feeds its own slice of
the batch, runs one jitted train step, and saves its local batch and the resulting params.
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main(port: str, process_id: str, out_dir: str) -> None:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id),
                               initialization_timeout=120)
    from mlsd_jax import sharding as shd
    from mlsd_jax import tasks
    from mlsd_jax.experiment import typed
    from mlsd_jax.training.optim import OptimConfig
    from mlsd_jax.training.trainer import Trainer, TrainerConfig
    from tests.utils import compose_config

    assert jax.process_count() == 2 and jax.device_count() == 4
    cfg = compose_config(["+task=ranking", "trainer.batch_size=4", "trainer.eval_batch_size=4",
                          "model.dropout=0.0", "model.input_noise=0.0"])
    task = tasks.build(cfg)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1]})
    trainer = Trainer(task, typed(TrainerConfig, cfg.trainer), typed(OptimConfig, cfg.optim), mesh)
    local = next(task.train_batches(0, 0))
    assert local["features"].shape[0] == 2  # half of the global batch of 4
    state = trainer.init_state()
    state, metrics = trainer.train_step(state, trainer.put_batch(local), jax.random.key(0))
    params = jax.tree.map(lambda x: np.asarray(jax.experimental.multihost_utils.process_allgather(
        x, tiled=True)), state.params)
    flat = {"/".join(str(k.key) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(os.path.join(out_dir, f"batch_{process_id}.npz"), **local)
    np.savez(os.path.join(out_dir, f"params_{process_id}.npz"), **flat)
    print(f"process {process_id}: loss {float(metrics['train/loss']):.6f}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
