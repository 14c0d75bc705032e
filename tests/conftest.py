"""Test setup: 8 simulated CPU devices so sharding is really exercised."""
import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from mlsd_jax.experiment import config_dir  # noqa: E402

# Small, fast settings for tests that run the real pipeline on the real embedded data.
TINY = [
    "trainer.max_steps=4", "trainer.eval_every=2", "trainer.log_every=2", "trainer.batch_size=8",
    "trainer.eval_batch_size=8", "trainer.progress=false", "export.enabled=false",
    "model.d_model=16", "model.encoder_hidden=[16]", "model.num_layers=1", "model.num_heads=2",
    "model.mlp_dim=16", "model.head_hidden=[16]", "data.list_size=32",
]


def compose_config(overrides=(), tiny=True):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides) + (TINY if tiny else []),
                      return_hydra_config=False)
    return cfg


@pytest.fixture
def make_cfg():
    return compose_config
