"""Shared test helpers (importable by subprocess workers: no environment side effects)."""
from hydra import compose, initialize_config_dir

from mlsd_jax.experiment import apply_debug, config_dir

# Tests run the real pipeline on the real embedded data, made fast by the debug overlay
# (configs/debug/fast.yaml plus each task's own `task.debug` node).
TINY = ["debug=fast", "export.enabled=false"]


def compose_config(overrides=(), tiny=True):
    """Composes ``configs/config.yaml`` with overrides (plus the debug overlay unless
    ``tiny=False``), with the overlay applied as ``experiments.run`` applies it."""
    overrides = (TINY if tiny else []) + list(overrides)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return apply_debug(cfg, overrides)
