"""The CUDA path's surroundings, on a CPU: how accelerators are chosen and degrade without CUDA.

The CUDA-only lines themselves (device selection, nccl, bf16 autocast) run in
`bench/gpu_check.sh` on a GPU machine; see docs/benchmarks.md, section 8.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from loguru import logger

from tinyexp_core.accelerators import (
    AcceleratorCfg,
    CPUAccelerator,
    DDPAccelerator,
    build_accelerator,
)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behave as on a machine without CUDA, even on one that has it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def single_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    messages: list[str] = []
    handler = logger.add(lambda m: messages.append(str(m)), level="WARNING", format="{message}")
    yield messages
    logger.remove(handler)


def test_auto_picks_the_cpu_accelerator_without_cuda(no_cuda, single_rank) -> None:
    acc = build_accelerator("auto")
    assert isinstance(acc, CPUAccelerator)
    assert acc.device == torch.device("cpu")
    acc.destroy()


def test_ddp_falls_back_to_gloo_on_cpu_without_cuda(no_cuda, single_rank) -> None:
    acc = build_accelerator("ddp")
    assert isinstance(acc, DDPAccelerator)
    assert (acc.backend, acc.device) == ("gloo", torch.device("cpu"))
    model = acc.prepare_model(torch.nn.Linear(2, 2))
    assert next(model.parameters()).device.type == "cpu"
    acc.destroy()


def test_mixed_precision_without_cuda_warns_and_autocasts_nothing(
    no_cuda, single_rank, warnings
) -> None:
    acc = AcceleratorCfg(accelerator="ddp", mixed_precision=True).build_accelerator()
    assert any("mixed_precision=true has no effect without CUDA" in m for m in warnings)
    assert isinstance(acc.autocast(), contextlib.nullcontext)
    with acc.autocast():
        out = torch.nn.Linear(2, 2)(torch.ones(1, 2))
    assert out.dtype == torch.float32
    acc.destroy()


def test_collective_timeout_comes_from_the_config_not_the_environment(
    single_rank, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The variable that once silently won over the config must change nothing now.
    monkeypatch.setenv("TINYEXP_COLLECTIVE_TIMEOUT_S", "1")
    acc = AcceleratorCfg(accelerator="cpu", collective_timeout_s=7.5).build_accelerator()
    assert acc.timeout_s == 7.5
    acc.destroy()
    default = AcceleratorCfg(accelerator="cpu").build_accelerator()
    assert default.timeout_s == AcceleratorCfg().collective_timeout_s == 300.0
    default.destroy()
