"""The command users run: python -m experiments.run +task=ranking (tiny settings)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils import TINY

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*overrides, timeout=600):
    return subprocess.run([sys.executable, "-m", "experiments.run", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # 20-45 s; the default suite keeps under 15 minutes
def test_cli_trains_evaluates_exports_and_resumes(tmp_path):
    args = ["+task=ranking", f"hydra.run.dir={tmp_path}", *[o for o in TINY if not o.startswith("export")],
            "export.enabled=true", "logger=wandb"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("test/ndcg@1", "test/ndcg@3", "test/ndcg@5", "test/ndcg@10", "test/mrr", "test/map"):
        assert 0.0 <= results["metrics"][key] <= 1.0
    assert Path(results["paths"]["export"], "saved_model.pb").exists()
    assert Path(results["paths"]["best_checkpoint"]).exists()
    assert results["config"]["task"]["name"] == "ranking"
    assert {"data_s", "train_s", "export_s", "total_s"} <= set(results["timings"])
    assert "test/ndcg@10" in proc.stdout  # the results table
    assert list(tmp_path.glob("wandb/offline-run-*"))

    # Same command, same directory, more steps: continues from the last checkpoint.
    more = [*args, "trainer.max_steps=6"]  # debug=fast runs 4; a value on the command line wins
    proc = run_cli(*more)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from" in proc.stderr + proc.stdout
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["steps_run"] == 2


def test_cli_unknown_loss_names_choices():
    proc = run_cli("+task=ranking", "ranking/loss=lambdamart", timeout=120)
    assert proc.returncode != 0
    assert "Available options in 'ranking/loss'" in proc.stderr and "lambdarank" in proc.stderr


def test_cli_missing_data_path_is_clear(tmp_path):
    proc = run_cli("+task=ranking", f"data.path={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}",
                   timeout=300)
    assert proc.returncode != 0
    assert str(tmp_path / "nope") in proc.stderr
