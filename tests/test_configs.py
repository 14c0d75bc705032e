"""Every config in configs/ composes, and bad choices fail with the valid options listed."""
from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from mlsd_jax.experiment import ExportConfig, typed
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import TrainerConfig
from tests.utils import compose_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = {p.name: sorted(q.stem for q in p.glob("*.yaml")) for p in CONFIG_DIR.iterdir() if p.is_dir()}
OPTIONS = [(g, o) for g, opts in GROUPS.items() if g != "task" for o in opts]


def test_every_file_starts_with_its_launch_command():
    for path in CONFIG_DIR.rglob("*.yaml"):
        head = path.read_text().splitlines()[:2]
        assert any(line.startswith("# Launch: python -m experiments.run") for line in head), path


@pytest.mark.parametrize("task", GROUPS["task"])
@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_composes_and_typechecks(task, group, option):
    overrides = [f"+task={task}", f"{group}={option}"]
    if group == "data" and option == "letor":
        overrides.append("data.path=/nonexistent")
    cfg = compose_config(overrides, tiny=False)
    typed(TrainerConfig, cfg.trainer)
    typed(OptimConfig, cfg.optim)
    typed(ExportConfig, cfg.export)
    if group in ("model", "loss"):
        assert callable(hydra.utils.instantiate(cfg[group]))


def test_unknown_loss_lists_valid_choices():
    with pytest.raises(MissingConfigException) as e:
        compose_config(["+task=ranking", "loss=not_a_loss"])
    for name in ("lambdarank", "softmax", "pairwise_logistic", "approx_ndcg", "listmle", "pointwise"):
        assert name in str(e.value)


def test_unknown_trainer_key_fails_at_load():
    cfg = compose_config(["+task=ranking", "+trainer.max_stepz=3"])
    with pytest.raises(Exception, match="max_stepz"):
        typed(TrainerConfig, cfg.trainer)


def test_group_without_task_prefix_is_rejected():
    with pytest.raises(ConfigCompositionException):
        compose_config(["model=mlp_ranker"], tiny=False)
