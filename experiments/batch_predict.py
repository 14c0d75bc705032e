"""Batch scoring: ``python -m experiments.batch_predict model=PATH input=PATH output=PATH``.

Examples:
  python -m experiments.batch_predict model=outputs/tabular/RUN/export input=adult.csv \
      output=scores.parquet keep=[id]
  python -m experiments.batch_predict model=outputs/ranking/RUN/export/1 \
      input=MSLR-WEB10K/Fold1/test.txt output=scores.parquet
  python -m experiments.batch_predict model=... input=rows.parquet output=scores/ engine=spark \
      'spark.master="spark://host:7077"'

The settings are in ``configs/batch_predict.yaml``; ``mlsd_jax.serving.batch`` does the work.
Prints a JSON summary (rows, seconds, rows/s, output) and writes it to ``summary.json`` in the
Hydra run folder. Errors a user can cause print one line and exit with status 2;
``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mlsd_jax.data.fetch import DatasetFetchError
from mlsd_jax.errors import UserError, exit_for_user_error
from mlsd_jax.experiment import config_dir, typed
from mlsd_jax.utils.xla_flags import configure_jax

configure_jax()

USER_ERRORS = (UserError, OmegaConfBaseException, DatasetFetchError, FileNotFoundError,
               FileExistsError, KeyError, ValueError)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="batch_predict")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from mlsd_jax.serving.batch import BatchPredictConfig, predict

    try:
        result = predict(typed(BatchPredictConfig, cfg))
    except USER_ERRORS as e:
        exit_for_user_error(e)
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(text)


if __name__ == "__main__":
    main()
