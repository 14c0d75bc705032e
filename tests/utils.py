"""Shared test helpers (importable by subprocess workers: no environment side effects)."""
from hydra import compose, initialize_config_dir

from mlsd_jax.experiment import config_dir

# Small, fast settings for tests that run the real pipeline on the real embedded data.
TINY = [
    "trainer.max_steps=4", "trainer.eval_every=2", "trainer.log_every=2", "trainer.batch_size=8",
    "trainer.eval_batch_size=8", "trainer.progress=false", "export.enabled=false",
    "model.d_model=16", "model.encoder_hidden=[16]", "model.num_layers=1", "model.num_heads=2",
    "model.mlp_dim=16", "model.head_hidden=[16]", "data.list_size=32",
]


def compose_config(overrides=(), tiny=True):
    """Composes ``configs/config.yaml`` with overrides (plus TINY unless ``tiny=False``)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=(TINY if tiny else []) + list(overrides))
