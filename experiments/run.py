"""Hydra entry point: ``python -m experiments.run +task=NAME [overrides...]``.

Examples:
  python -m experiments.run +task=ranking
  python -m experiments.run +task=ranking ranking/model=mlp_ranker ranking/loss=softmax optim.lr=3e-4
  python -m experiments.run +task=ranking ranking/data=bio_kddcup04 trainer.max_steps=2000
  python -m experiments.run +task=ranking data.path=/data/MSLR-WEB30K/Fold1
  python -m experiments.run +task=tabular debug=fast
  python -m experiments.run +task=ranking hydra.run.dir=outputs/my_run   # rerun resumes

Errors a user can cause (bad settings or data, a run dir of another run, a diverged run) print
one line and exit with status 2; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""
from __future__ import annotations


import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mlsd_jax.data.fetch import DatasetFetchError
from mlsd_jax.errors import UserError, exit_for_user_error
from mlsd_jax.experiment import config_dir, run
from mlsd_jax.utils.xla_flags import configure_jax

# XLA:CPU defaults measured on the ranking step (mlsd_jax/utils/xla_flags.py); they must be in
# the environment before JAX starts its backends. XLA_FLAGS you set yourself win.
configure_jax()

# Raised for what a user controls: settings, files and data. Bugs raise other types.
USER_ERRORS = (UserError, OmegaConfBaseException, DatasetFetchError, FileNotFoundError, KeyError,
               ValueError)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the *validation* objective (what a Hydra sweeper optimises), never a test metric."""
    try:
        return run(cfg)["objective"]["value"]
    except USER_ERRORS as e:
        exit_for_user_error(e)


if __name__ == "__main__":
    main()
