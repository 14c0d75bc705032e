"""Hydra entry point of the model server: ``python -m experiments.serve model_name=NAME
model_base_path=DIR [overrides]``.

Examples:
  python -m experiments.serve model_name=tabular model_base_path=outputs/tabular/RUN/export
  python -m experiments.serve model_name=ranking model_base_path=/models/ranking \\
      rest_port=0 grpc_port=0 workers=2 batching.max_batch_size=32 log.durable=true
  python -m experiments.serve 'models=[{name: a, base_path: /m/a}, {name: b, base_path: /m/b}]'

Settings, endpoints and the Python entry points: ``mlsd_jax/serving/server.py``. A bad setting
prints one line and exits with status 2.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from mlsd_jax.experiment import config_dir
from mlsd_jax.utils.xla_flags import configure_jax

configure_jax()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
def main(cfg: DictConfig) -> None:
    from mlsd_jax.serving.server import main_from_config

    code = main_from_config(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
