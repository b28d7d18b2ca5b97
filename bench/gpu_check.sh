#!/usr/bin/env bash
# Issue 7, item 8, for a machine with a CUDA GPU (not part of `make bench`): the MNIST and
# ResNet-18 examples with the DDP accelerator on CUDA (nccl with 2+ GPUs) and bf16 mixed
# precision vs a bare PyTorch loop on the same GPU. Saves bench/results/gpu_check-<stamp>.json
# and regenerates docs/benchmarks.md. Takes about 5-10 minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'"
RAY_USAGE_STATS_ENABLED=0 "$PY" -m bench.gpu_check "$@"
"$PY" -m bench.report
