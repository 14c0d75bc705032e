#!/usr/bin/env bash
# End-to-end training speed of `python -m experiments.run +task=ranking` (no export): the same
# 800 steps with steps in flight chosen by backend (8 on GPU/TPU) and with the fully synchronous
# loop (1), then a summary JSON. Usage: bash benchmarks/ranking_fit.sh [OUT_DIR]
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
tmp=$(mktemp -d)
common=(+task=ranking export.enabled=false trainer.progress=false trainer.patience=0
        trainer.max_steps=800 trainer.eval_every=200)
python3 -m experiments.run "${common[@]}" hydra.run.dir="$tmp/auto"
python3 -m experiments.run "${common[@]}" trainer.max_steps_in_flight=1 hydra.run.dir="$tmp/sync"
python3 - "$tmp" "$out" <<'PY'
import json, sys, pathlib
tmp, out = map(pathlib.Path, sys.argv[1:])
import jax
kind = jax.devices()[0].device_kind.lower()
tag = "cpu" if jax.default_backend() == "cpu" else next((t for t in ("h100", "h200", "a100", "l4", "t4", "v5", "v4") if t in kind), kind.replace(" ", "_"))
rows = {}
for name in ("auto", "sync"):
    r = json.loads((tmp / name / "results.json").read_text())
    rows[name] = {"steps_per_s": r["timings"]["steps_per_s"], "train_s": r["timings"]["train_s"],
                  "first_step_s": r["timings"]["first_step_s"], "total_s": r["timings"]["total_s"],
                  "eval/ndcg@10": r["metrics"]["eval/ndcg@10"], "environment": r["environment"]}
path = out / f"ranking_fit_{tag}.json"
path.write_text(json.dumps({"device": jax.devices()[0].device_kind, "runs": rows}, indent=2))
print(json.dumps(rows, indent=2))
PY
