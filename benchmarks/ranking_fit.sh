#!/usr/bin/env bash
# End-to-end training speed of `python -m experiments.run +task=ranking` (no export): the same
# 800 steps with steps in flight chosen by backend (8 on GPU/TPU) and device batches prefetched
# by a thread (auto), the same without the prefetch thread, and the fully synchronous loop, each
# at the default batch (8 lists) and at 64 lists; then a summary JSON.
# Usage: [BATCHES="8 64"] bash benchmarks/ranking_fit.sh [OUT_DIR]
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
tmp=$(mktemp -d)
common=(+task=ranking export.enabled=false trainer.progress=false trainer.patience=0
        trainer.max_steps=800 trainer.eval_every=200)
batches=${BATCHES:-8 64}
for b in $batches; do
  python3 -m experiments.run "${common[@]}" trainer.batch_size=$b hydra.run.dir="$tmp/auto_$b"
  python3 -m experiments.run "${common[@]}" trainer.batch_size=$b trainer.prefetch_batches=0 \
      hydra.run.dir="$tmp/no_prefetch_$b"
  python3 -m experiments.run "${common[@]}" trainer.batch_size=$b trainer.max_steps_in_flight=1 \
      hydra.run.dir="$tmp/sync_$b"
done
python3 - "$tmp" "$out" "$batches" <<'PY'
import json, sys, pathlib
tmp, out = map(pathlib.Path, sys.argv[1:3])
batches = [int(b) for b in sys.argv[3].split()]
import jax
kind = jax.devices()[0].device_kind.lower()
tag = "cpu" if jax.default_backend() == "cpu" else next((t for t in ("h100", "h200", "a100", "l4", "t4", "v5", "v4") if t in kind), kind.replace(" ", "_"))
rows = {}
for name in [f"{m}_{b}" for b in batches for m in ("auto", "no_prefetch", "sync")]:
    r = json.loads((tmp / name / "results.json").read_text())
    rows[name] = {"steps_per_s": r["timings"]["steps_per_s"], "train_s": r["timings"]["train_s"],
                  "first_step_s": r["timings"]["first_step_s"], "total_s": r["timings"]["total_s"],
                  "test/ndcg@10": r["metrics"]["test/ndcg@10"], "environment": r["environment"]}
path = out / f"ranking_fit_{tag}.json"
path.write_text(json.dumps({"device": jax.devices()[0].device_kind, "runs": rows}, indent=2))
print(json.dumps(rows, indent=2))
PY
