"""CPU data parallel over gloo; gradients are synchronised through DistributedDataParallel."""

from __future__ import annotations

import torch

from tinyexp_core.accelerators.base import TorchDistributedAccelerator


class CPUAccelerator(TorchDistributedAccelerator):
    """Always runs: gloo process group when world size > 1, plain module otherwise."""

    backend = "gloo"

    def _select_device(self) -> torch.device:
        return torch.device("cpu")
