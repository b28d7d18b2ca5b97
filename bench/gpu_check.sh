#!/usr/bin/env bash
# Issue 7 item 8 / issue 24, for a machine with a CUDA GPU (not part of `make bench`): first
# step, steady step time of the MNIST example (DDP accelerator on CUDA, bf16) vs a bare loop
# on the same GPU, NCCL all-reduce (see bench/gpu_check.py). Saves
# bench/results/gpu_check-<stamp>.json and regenerates docs/benchmarks.md. Under 5 minutes.
# Where Ray is not installed the TinyExp side runs through the local launcher (the result
# says which). PY=python3 runs it with an image's own Python and PyTorch; a copy of the
# tree without its git history records the commit given in BENCH_COMMIT (and
# BENCH_CLEAN_TREE=1|0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'"
RAY_USAGE_STATS_ENABLED=0 "$PY" -m bench.gpu_check "$@"
"$PY" -m bench.report
