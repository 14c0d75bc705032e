"""Benchmarks must not rot: the quick mode of every script in benchmarks/ runs and writes its
results (each in its own process, as a user runs it, with its output in a temporary folder).

Quick modes still compile the models and train for a few steps, so this module is `slow`.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

# script -> (arguments after the script; {out} is the output folder), files that must appear.
QUICK = {
    "ranking_throughput.py": (["--quick", "--out-dir", "{out}"],
                              ["ranking_throughput_cpu.json", "ranking_throughput_cpu.md"]),
    "ranking_quality.py": (["--quick", "--out", "{out}/ranking_quality"],
                           ["ranking_quality.json", "ranking_quality.md"]),
    "ranking_pipeline.py": (["--quick", "--out-dir", "{out}"],
                            ["ranking_pipeline_cpu.json", "ranking_pipeline_cpu.md"]),
    "tabular_quality.py": (["--quick", "--out", "{out}"],
                           ["tabular_quality_quick.json", "tabular_quality_quick.md"]),
    "recommendation_quality.py": (["--quick", "--out-dir", "{out}"],
                                  ["recommendation_quality_quick.json",
                                   "recommendation_quality_quick.md"]),
    "ctr_quality.py": (["--quick", "--out", "{out}"],
                       ["ctr_quality_quick.json", "ctr_quality_quick.md"]),
    "criteo_reader.py": (["--quick", "--out", "{out}"],
                         ["criteo_reader_quick.json", "criteo_reader_quick.md"]),
    "news_feed_quality.py": (["--quick", "--out", "{out}"],
                             ["news_feed_quality_quick.json", "news_feed_quality_quick.md"]),
    "spam_quality.py": (["--quick", "--out", "{out}"],
                        ["spam_quality_quick.json", "spam_quality_quick.md"]),
    "fraud_imbalance.py": (["--quick", "--out", "{out}"],
                           ["fraud_imbalance_quick.json", "fraud_imbalance_quick.md"]),
    "moderation.py": (["--quick", "--out", "{out}"],
                      ["moderation_quick.json", "moderation_quick.md"]),
    "text_throughput.py": (["--quick", "--out-dir", "{out}"],
                           ["text_throughput_cpu.json", "text_throughput_cpu.md"]),
    "recsys_throughput.py": (["--quick", "--out-dir", "{out}"],
                             ["recsys_throughput_cpu.json", "recsys_throughput_cpu.md"]),
    "image_quality.py": (["--quick", "--out", "{out}"],
                         ["image_quality_quick.json", "image_quality_quick.md"]),
    "vision_throughput.py": (["--quick", "--out-dir", "{out}"],
                             ["vision_throughput_cpu.json", "vision_throughput_cpu.md"]),
    "serving.py": (["--quick", "--out-dir", "{out}"], ["serving_cpu_quick.json", "serving_cpu_quick.md"]),
    "drift_cost.py": (["--quick", "--out", "{out}"], ["drift_cost_quick.json", "drift_cost_quick.md"]),
    "video_quality.py": (["--quick", "--out", "{out}"],
                         ["video_quality_quick.json", "video_quality_quick.md"]),
    "monitoring_acs.py": (["--quick", "--out", "{out}"],
                          ["monitoring_acs_quick.json", "monitoring_acs_quick.md", "monitoring_acs_quick.png"]),
    "changepoints.py": (["--quick", "--out", "{out}"], ["changepoints_quick.json", "changepoints_quick.md"]),
}


def test_every_benchmark_script_has_a_quick_run():
    scripts = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))
    assert scripts, "no benchmark scripts found"
    missing = [s for s in scripts if s not in QUICK]
    assert not missing, f"add the quick run of {missing} to QUICK in {Path(__file__).name}"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUICK))
def test_quick_run_writes_results(script, tmp_path):
    if not (BENCH / script).is_file():
        pytest.fail(f"benchmarks/{script} is listed in QUICK but does not exist")
    args, files = QUICK[script]
    # As a user runs it: no simulated devices from conftest; CPU (the figures are not checked).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(BENCH / script), *(a.format(out=tmp_path) for a in args)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    for name in files:
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 0, f"{script} did not write {name}"
