#!/usr/bin/env bash
# Ranking throughput on a GPU machine, from the repository root: JAX vs torch eager vs
# torch.compile (whole step, CUDA graphs), interleaved. Needs jax (with CUDA), flax, optax, orbax,
# numpy and torch; not hydra, grain or tensorflow, and no network: the converted MSLR sample
# store travels in benchmarks/.store (git-ignored; make it where the data can be fetched with
#   python benchmarks/ranking_throughput.py --export-store benchmarks/.store).
# Usage: [OUT=dir] bash benchmarks/gpu_run.sh [--quick] [--models attn_ranker] [...]
set -euo pipefail
if [ ! -f benchmarks/.store/meta.json ]; then
  echo "benchmarks/.store is missing: run 'python benchmarks/ranking_throughput.py" \
       "--export-store benchmarks/.store' on a machine with the data first" >&2
  exit 2
fi
nvidia-smi -L
python3 benchmarks/ranking_throughput.py --store benchmarks/.store --out-dir "${OUT:-benchmarks/results}" "$@"
