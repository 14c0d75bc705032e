"""Metric loggers: console (through the progress bar), a JSONL file, and Weights & Biases."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


class JsonlLogger:
    """One JSON object a line in ``<workdir>/metrics.jsonl``; appends, so resumed runs continue."""

    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._f.write(json.dumps({"step": int(step), **_scalars(metrics)}) + "\n")
        self._f.flush()

    def rewind(self, step: int) -> None:
        """Drops lines after ``step`` (the step a run resumes from): no step is logged twice."""
        self._f.close()
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by a kill: drop it
                continue
        if step == 0:
            keep = []
        if len(keep) != len(lines):
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(keep), encoding="utf-8")
            os.replace(tmp, self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        self._f.close()


class ConsoleLogger:
    """Writes evaluation lines above the progress bar (training lines go to its postfix)."""

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if any(not k.startswith("train/") for k in metrics):
            text = "  ".join(f"{k}={float(v):.4f}" for k, v in sorted(metrics.items()))
            tqdm.write(f"step {int(step)}: {text}")

    def close(self) -> None:
        pass


class WandbLogger:
    """Weights & Biases, offline by default (no login, no network): ``wandb sync`` later."""

    def __init__(self, workdir: str | Path, config: Mapping[str, Any], *, project: str = "mlsd_jax",
                 mode: str = "offline", name: str | None = None, entity: str | None = None,
                 tags=None):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run = wandb.init(project=project, entity=entity, name=name, mode=mode,
                              dir=str(workdir), config=dict(config), tags=list(tags or []),
                              reinit="finish_previous")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.run.log(_scalars(metrics), step=int(step))

    def close(self) -> None:
        self.run.finish()


class MultiLogger:
    def __init__(self, loggers):
        self.loggers = list(loggers)

    def rewind(self, step: int) -> None:
        for logger in self.loggers:
            if hasattr(logger, "rewind"):
                logger.rewind(step)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(step, metrics)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def make_logger(cfg: Mapping[str, Any] | None, workdir: str | Path, config: Mapping[str, Any]):
    """``logger`` config: ``{kind: console|wandb, ...wandb options}``; JSONL is always written."""
    cfg = dict(cfg or {})
    kind = cfg.pop("kind", "console")
    loggers = [JsonlLogger(workdir), ConsoleLogger()]
    if kind == "wandb":
        loggers.append(WandbLogger(workdir, config, **cfg))
    elif kind != "console":
        raise ValueError(f"logger.kind={kind!r}; valid choices: 'console', 'wandb'")
    return MultiLogger(loggers)
