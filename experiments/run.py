"""Hydra entry point: ``python -m experiments.run +task=ranking [overrides...]``.

Examples:
  python -m experiments.run +task=ranking
  python -m experiments.run +task=ranking model=mlp_ranker loss=softmax optim.lr=3e-4
  python -m experiments.run +task=ranking data=bio_kddcup04 trainer.max_steps=2000
  python -m experiments.run +task=ranking data.path=/data/MSLR-WEB30K/Fold1
  python -m experiments.run +task=ranking hydra.run.dir=outputs/my_run   # rerun resumes
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from mlsd_jax.experiment import config_dir, run


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Returns the *validation* objective (what a Hydra sweeper optimises), never a test metric."""
    return run(cfg)["objective"]["value"]


if __name__ == "__main__":
    main()
