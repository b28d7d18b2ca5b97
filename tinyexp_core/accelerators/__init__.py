"""Accelerators behind one protocol, picked once by `AcceleratorCfg.build_accelerator()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from tinyexp_core.config.exceptions import ConfigValueError, UnknownAcceleratorTypeError

if TYPE_CHECKING:
    from tinyexp_core.accelerators.base import Accelerator

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


# Imported on first use: torch (cpu, ddp) and accelerate (hf) load only when a run builds
# an accelerator, so importing an experiment's config (AcceleratorCfg) stays light.
_LAZY = {
    "Accelerator": "base",
    "TorchDistributedAccelerator": "base",
    "CPUAccelerator": "cpu",
    "DDPAccelerator": "ddp",
    "HFAccelerator": "hf",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)


def build_accelerator(
    kind: str = "auto", *, timeout_s: float | None = None, mixed_precision: bool = False
) -> Accelerator:
    """`auto`: DDP (nccl) with CUDA, CPU (gloo) without; `cpu`, `ddp`, `hf` as named."""
    if kind == "auto":
        import torch

        kind = "ddp" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        from tinyexp_core.accelerators.cpu import CPUAccelerator

        return CPUAccelerator(timeout_s=timeout_s, mixed_precision=mixed_precision)
    if kind == "ddp":
        from tinyexp_core.accelerators.ddp import DDPAccelerator

        return DDPAccelerator(timeout_s=timeout_s, mixed_precision=mixed_precision)
    if kind == "hf":
        from tinyexp_core.accelerators.hf import HFAccelerator

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
