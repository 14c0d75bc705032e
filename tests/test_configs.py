"""Every task composes with each of its own options, and bad choices fail with the options listed.

Task options live in per-task namespaces (``configs/<task>/<group>/<option>.yaml``, selected with
``<task>/<group>=<option>``); shared groups (trainer, optim, mesh, logger, export, debug) sit at the
top. Each task is composed with its own options only, never a cross product with other tasks'.
"""
from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from mlsd_jax.experiment import ExportConfig, typed
from mlsd_jax.training.optim import OptimConfig
from mlsd_jax.training.trainer import TrainerConfig
from tests.utils import compose_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
SHARED = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in TASKS
                and p.name != "task")
TASK_OPTIONS = [(t, f"{t}/{g.name}", o.stem) for t in TASKS
                for g in sorted((CONFIG_DIR / t).iterdir()) if g.is_dir()
                for o in sorted(g.glob("*.yaml"))]
SHARED_OPTIONS = [(g, o.stem) for g in SHARED for o in sorted((CONFIG_DIR / g).glob("*.yaml"))]
NEEDS = {("ranking/data", "letor"): ["data.path=/nonexistent"]}


def _typecheck(cfg):
    typed(TrainerConfig, cfg.trainer)
    typed(OptimConfig, cfg.optim)
    typed(ExportConfig, cfg.export)


def test_every_file_starts_with_its_launch_command():
    for path in CONFIG_DIR.rglob("*.yaml"):
        head = path.read_text().splitlines()[:3]
        assert any(line.startswith("# Launch: python -m experiments.") for line in head), path


def test_every_task_has_its_own_namespace():
    for task in TASKS:
        assert (CONFIG_DIR / task).is_dir(), f"configs/{task}/ holds the task's option groups"


@pytest.mark.parametrize("task,group,option", TASK_OPTIONS)
def test_every_task_option_composes_and_typechecks(task, group, option):
    overrides = [f"+task={task}", f"{group}={option}", *NEEDS.get((group, option), [])]
    cfg = compose_config(overrides, tiny=False)
    _typecheck(cfg)
    key = group.split("/", 1)[1]
    if key in ("model", "loss"):  # a partial: task builders add fitted facts (cardinalities)
        assert callable(hydra.utils.instantiate(cfg[key], _partial_=True))


@pytest.mark.parametrize("group,option", SHARED_OPTIONS)
@pytest.mark.parametrize("task", TASKS)
def test_shared_options_compose_with_every_task(task, group, option):
    _typecheck(compose_config([f"+task={task}", f"{group}={option}"], tiny=False))


@pytest.mark.parametrize("task", TASKS)
def test_debug_overlay_shrinks_every_task_and_keeps_explicit_values(task):
    full = compose_config([f"+task={task}"], tiny=False)
    fast = compose_config([f"+task={task}", "debug=fast"], tiny=False)
    assert fast.trainer.max_steps < full.trainer.max_steps
    explicit = compose_config([f"+task={task}", "debug=fast", "trainer.max_steps=7"], tiny=False)
    assert explicit.trainer.max_steps == 7


def test_unknown_loss_lists_valid_choices():
    with pytest.raises(MissingConfigException) as e:
        compose_config(["+task=ranking", "ranking/loss=not_a_loss"])
    for name in ("lambdarank", "softmax", "pairwise_logistic", "approx_ndcg", "listmle", "pointwise"):
        assert name in str(e.value)


def test_unknown_trainer_key_fails_at_load():
    cfg = compose_config(["+task=ranking", "+trainer.max_stepz=3"])
    with pytest.raises(Exception, match="max_stepz"):
        typed(TrainerConfig, cfg.trainer)


def test_task_option_without_its_task_is_rejected():
    with pytest.raises(ConfigCompositionException):
        compose_config(["ranking/model=mlp_ranker"], tiny=False)


def test_installed_package_ships_every_config():
    """setup.py's package_data globs reach every nested config file."""
    import re

    text = (CONFIG_DIR.parent / "setup.py").read_text()
    globs = re.search(r'"mlsd_jax._configs": \[([^\]]*)\]', text).group(1)
    depths = {g.count("/") for g in re.findall(r'"([^"]+)"', globs)}
    for path in CONFIG_DIR.rglob("*.yaml"):
        assert len(path.relative_to(CONFIG_DIR).parts) - 1 in depths, path
