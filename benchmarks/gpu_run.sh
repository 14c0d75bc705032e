#!/usr/bin/env bash
# Ranking throughput on a GPU machine, from the repository root. The converted MSLR sample store
# travels in benchmarks/.store (make it with:
#   python benchmarks/ranking_throughput.py --export-store benchmarks/.store).
set -e
nvidia-smi -L
python3 benchmarks/ranking_throughput.py --store benchmarks/.store --out-dir "${OUT:-benchmarks/results}" "$@"
