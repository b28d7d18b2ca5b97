#!/usr/bin/env bash
# Issue 7 item 8 / issue 24, for a machine with a CUDA GPU (not part of `make bench`): first
# step, steady step time of the MNIST example (DDP accelerator on CUDA, bf16) vs a bare loop
# on the same GPU, NCCL all-reduce (see bench/gpu_check.py). Saves
# bench/results/gpu_check-<stamp>.json and regenerates docs/benchmarks.md. Under 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'"
RAY_USAGE_STATS_ENABLED=0 "$PY" -m bench.gpu_check "$@"
"$PY" -m bench.report
