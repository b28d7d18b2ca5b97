"""Accelerators behind one protocol, picked once by `AcceleratorCfg.build_accelerator()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..exceptions import ConfigValueError, UnknownAcceleratorTypeError
from .base import Accelerator, TorchDistributedAccelerator
from .cpu import CPUAccelerator
from .ddp import DDPAccelerator

AcceleratorName = Literal["auto", "cpu", "ddp", "hf"]
ACCELERATORS: tuple[str, ...] = get_args(AcceleratorName)

__all__ = [
    "ACCELERATORS",
    "Accelerator",
    "AcceleratorName",
    "AcceleratorCfg",
    "CPUAccelerator",
    "DDPAccelerator",
    "HFAccelerator",
    "TorchDistributedAccelerator",
    "build_accelerator",
]


def __getattr__(name: str):
    # accelerate is optional: import HFAccelerator only when asked for.
    if name == "HFAccelerator":
        from .hf import HFAccelerator

        return HFAccelerator
    raise AttributeError(name)


def build_accelerator(
    kind: str = "auto", *, timeout_s: float | None = None, mixed_precision: bool = False
) -> Accelerator:
    """`auto`: DDP (nccl) with CUDA, CPU (gloo) without; `cpu`, `ddp`, `hf` as named."""
    if kind == "auto":
        import torch

        kind = "ddp" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return CPUAccelerator(timeout_s=timeout_s, mixed_precision=mixed_precision)
    if kind == "ddp":
        return DDPAccelerator(timeout_s=timeout_s, mixed_precision=mixed_precision)
    if kind == "hf":
        from .hf import HFAccelerator

        return HFAccelerator(mixed_precision=mixed_precision)
    raise UnknownAcceleratorTypeError(kind, ACCELERATORS)


@dataclass
class AcceleratorCfg:
    """Which accelerator trains the model, and how collectives behave."""

    accelerator: AcceleratorName = "auto"
    collective_timeout_s: float = 300.0  # a rank silent this long fails the run
    mixed_precision: bool = False  # bf16 autocast on CUDA; ignored (with a warning) on CPU

    def validate(self) -> None:
        # `accelerator` is a Literal: the override parser has checked the choice.
        if self.collective_timeout_s <= 0:
            raise ConfigValueError(
                "collective_timeout_s", self.collective_timeout_s, "a number of seconds > 0"
            )

    def build_accelerator(self) -> Accelerator:
        """The configured accelerator, its collectives bounded by `collective_timeout_s`."""
        import torch

        if self.mixed_precision and not torch.cuda.is_available():
            from loguru import logger

            logger.warning("accelerator_cfg.mixed_precision=true has no effect without CUDA")
        return build_accelerator(
            self.accelerator,
            timeout_s=self.collective_timeout_s,
            mixed_precision=self.mixed_precision,
        )
