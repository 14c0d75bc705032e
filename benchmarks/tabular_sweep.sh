#!/usr/bin/env bash
# The validation sweep that chose the tabular defaults (configs/task/tabular.yaml): each arm is
# one `+task=tabular` run on the same split; the arm with the best validation AUC became the
# default. Test AUC is printed for the record only; it chose nothing.
# Usage: bash benchmarks/tabular_sweep.sh > benchmarks/results/tabular_sweep.txt
set -uo pipefail
tmp=$(mktemp -d)
base=(export.enabled=false trainer.progress=false data.numeric_buckets=0 data.piecewise_linear=false
      model.dropout=0.1 optim.lr=2e-3 trainer.batch_size=256 trainer.eval_every=250 trainer.patience=6)
run() {
  name=$1; shift
  python -m experiments.run +task=tabular "${base[@]}" hydra.run.dir="$tmp/$name" "$@" > "$tmp/$name.log" 2>&1
  python - "$tmp/$name/results.json" "$name" "$*" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = r["metrics"]
print(f"| {sys.argv[2]} | {sys.argv[3] or '(first defaults)'} | {m['valid/auc']:.4f} | {m['test/auc']:.4f} | {r['best_step']} |")
PY
}
echo "| arm | overrides | valid AUC | test AUC | best step |"
echo "|---|---|---|---|---|"
run base
run buckets20 data.numeric_buckets=20
run A data.numeric_buckets=20 model.dropout=0.3 optim.lr=1e-3 trainer.batch_size=512 trainer.eval_every=100 trainer.patience=8
run B model.dropout=0.3 optim.lr=1e-3 trainer.batch_size=512 trainer.eval_every=100 trainer.patience=8
run C data.numeric_buckets=20 model.dropout=0.3 optim.lr=1e-3 trainer.batch_size=512 trainer.eval_every=100 trainer.patience=8 optim.weight_decay=1e-3 model.embed_dim=8
run D model.dropout=0.3 optim.lr=1e-3 trainer.batch_size=512 trainer.eval_every=100 trainer.patience=8 model.hidden=[128,64] model.embed_dim=8
run E model.dropout=0.2 optim.lr=5e-4 trainer.eval_every=100 trainer.patience=10 trainer.max_steps=6000 model.embed_dim=8
run PLE32 data.numeric_buckets=32 data.piecewise_linear=true model.dropout=0.3 optim.lr=1e-3 trainer.batch_size=512 trainer.eval_every=100 trainer.patience=8
run PLE32_wd data.numeric_buckets=32 data.piecewise_linear=true model.dropout=0.3 optim.lr=1e-3 trainer.batch_size=512 trainer.eval_every=100 trainer.patience=8 model.embed_dim=8 optim.weight_decay=1e-3
run PLE64 data.numeric_buckets=64 data.piecewise_linear=true model.dropout=0.3 optim.lr=1e-3 trainer.batch_size=512 trainer.eval_every=100 trainer.patience=8
run PLE32_wide data.numeric_buckets=32 data.piecewise_linear=true model.dropout=0.3 optim.lr=5e-4 trainer.batch_size=512 trainer.eval_every=100 trainer.patience=10 model.hidden=[256,256]
