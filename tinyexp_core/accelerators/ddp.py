"""DistributedDataParallel: nccl on CUDA, gloo on CPU, chosen by hardware (as Ray Train does)."""

from __future__ import annotations

import torch

from tinyexp_core.accelerators.base import TorchDistributedAccelerator


class DDPAccelerator(TorchDistributedAccelerator):
    """DDP on one CUDA device per rank when CUDA is present, else on CPU with gloo."""

    def __init__(self, *, timeout_s: float | None = None, mixed_precision: bool = False) -> None:
        self.backend = "nccl" if torch.cuda.is_available() else "gloo"
        super().__init__(timeout_s=timeout_s, mixed_precision=mixed_precision)

    def _select_device(self) -> torch.device:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # Under Ray each actor sees only its own GPU, so device_count() is 1 there.
        index = self.local_rank if torch.cuda.device_count() > 1 else 0
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
