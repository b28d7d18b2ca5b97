"""Hugging Face Accelerate behind the same protocol (optional: needs `accelerate`)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from tinyexp_core.config.exceptions import ConfigValueError


class HFAccelerator:
    """Delegates to `accelerate.Accelerator`; same method names as the other accelerators."""

    def __init__(self, *, mixed_precision: bool = False, **kwargs: Any) -> None:
        try:
            from accelerate import Accelerator as _Accelerate
        except ImportError:
            raise ConfigValueError(
                "accelerator", "hf", "install the `hf` extra (pip install accelerate) to use it"
            ) from None
        precision = "bf16" if mixed_precision and torch.cuda.is_available() else "no"
        self._acc = _Accelerate(mixed_precision=precision, **kwargs)
        self.rank = self._acc.process_index
        self.world_size = self._acc.num_processes
        self.local_rank = self._acc.local_process_index
        self.device = self._acc.device
        self._destroyed = False

    @property
    def is_main_process(self) -> bool:
        return self._acc.is_main_process

    def prepare(self, model: Any, optimizer: Any = None) -> Any:
        if optimizer is None:
            return self._acc.prepare(model)
        return self._acc.prepare(model, optimizer)

    def prepare_model(self, model: Any) -> Any:
        return self._acc.prepare_model(model)

    def prepare_optimizer(self, optimizer: Any) -> Any:
        return self._acc.prepare_optimizer(optimizer)

    def unwrap_model(self, model: Any) -> Any:
        return self._acc.unwrap_model(model)

    def backward(self, loss: torch.Tensor) -> None:
        self._acc.backward(loss)

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._acc.reduce(tensor.detach().clone().to(self.device), reduction="sum")

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._acc.reduce(tensor.detach().clone().float().to(self.device), reduction="mean")

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self._acc.gather(tensor.detach().to(self.device))

    def wait_for_everyone(self) -> None:
        self._acc.wait_for_everyone()

    def autocast(self) -> contextlib.AbstractContextManager:
        return self._acc.autocast()

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._acc.print(*args, **kwargs)

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        with contextlib.suppress(Exception):
            self._acc.end_training()
