"""Tiny experiments for the distributed tests, importable by Ray workers by module name."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from tests.hooks import wrapped
from tinyexp_core.config.experiment import TinyExp
from tinyexp_core.examples.mnist_exp import Exp as MnistExp
from tinyexp_core.training import TrainingSession

RANK_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BARRIER_DELAY_S = 1.0  # how long rank 1 holds back before the barrier


def state_fingerprint(state: Any) -> str:
    """sha256 of a module's (or a state dict's) tensors: names, dtypes, shapes and bytes."""
    if hasattr(state, "state_dict"):
        state = state.state_dict()
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@dataclass(repr=False)
class CollectivesExp(TinyExp):
    """Runs each collective once on known per-rank inputs and returns what every rank saw."""

    exp_name: str = "collectives"
    accelerator: Literal["cpu", "ddp"] = "cpu"

    def build_accelerator(self):
        from tinyexp_core.accelerators import CPUAccelerator, DDPAccelerator

        cls = CPUAccelerator if self.accelerator == "cpu" else DDPAccelerator
        return cls(timeout_s=60)

    def train(self) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        env = {key: os.environ.get(key) for key in RANK_ENV_KEYS}
        acc = self.build_accelerator()
        rank = acc.rank
        local = torch.tensor([rank + 1.0, 10.0 * (rank + 1)])
        summed = acc.reduce_sum(local)
        result = {
            "env": env,
            "pid": os.getpid(),
            "class": type(acc).__name__,
            "backend": dist.get_backend(),
            "rank": rank,
            "world_size": acc.world_size,
            "is_main_process": acc.is_main_process,
            "reduce_sum": summed.tolist(),
            "input_untouched": local.tolist() == [rank + 1.0, 10.0 * (rank + 1)],
            "reduce_mean": acc.reduce_mean(torch.tensor([2.0 * rank, 4.0])).tolist(),
            "reduce_mean_int": acc.reduce_mean(torch.tensor([rank], dtype=torch.int64)).tolist(),
            "gather": acc.gather(torch.tensor([10 * rank, 10 * rank + 1])).tolist(),
            "gather_scalar": acc.gather(torch.tensor(float(rank))).tolist(),
        }
        # Rank 1 arrives late: rank 0's barrier must wait for it.
        if rank == 1:
            time.sleep(BARRIER_DELAY_S)
        started = time.perf_counter()
        acc.wait_for_everyone()
        result["barrier_wait_s"] = time.perf_counter() - started
        acc.destroy()
        result["initialized_after_destroy"] = dist.is_initialized()
        acc.destroy()  # idempotent: a second call is a no-op, not an error
        result["destroyed_twice"] = True
        return result


@dataclass(repr=False)
class FingerprintedMnistExp(MnistExp):
    """The MNIST example, also returning each rank's final model fingerprint."""

    def train(self) -> dict[str, Any]:
        def fingerprint(session: TrainingSession, *_: Any, **__: Any) -> None:
            self._fingerprint = state_fingerprint(session.model)

        with wrapped(TrainingSession, "end_epoch", after=fingerprint):
            summary = super().train().to_dict()
        summary["rank"] = int(os.environ.get("RANK", "0"))
        summary["model_sha256"] = self._fingerprint
        return summary


@dataclass(repr=False)
class FailingExp(TinyExp):
    """Rank 1 raises at once; rank 0 would sleep long, so the launcher must not wait for it."""

    exp_name: str = "failing"
    rank0_sleep_s: float = 120.0

    def train(self) -> dict[str, Any]:
        rank = int(os.environ.get("RANK", "0"))
        if rank == 1:
            raise ValueError("boom on purpose in rank 1")
        time.sleep(self.rank0_sleep_s)
        return {"rank": rank}


@dataclass(repr=False)
class KilledRankExp(TinyExp):
    """Rank 1's process is SIGKILLed (no Python exception); rank 0 would sleep long."""

    exp_name: str = "killed_rank"
    rank0_sleep_s: float = 120.0

    def train(self) -> dict[str, Any]:
        import signal

        rank = int(os.environ.get("RANK", "0"))
        if rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.rank0_sleep_s)
        return {"rank": rank}


@dataclass(repr=False)
class SleepingExp(TinyExp):
    """Every rank writes its pid to `<pid_dir>/rank<r>.pid`, rank 0 logs a line, all sleep."""

    exp_name: str = "sleeping"
    pid_dir: str = ""
    sleep_s: float = 120.0

    def train(self) -> dict[str, Any]:
        from pathlib import Path

        rank = int(os.environ.get("RANK", "0"))
        logger = self.logger_cfg.build_logger(None, distributed_rank=rank)
        logger.info(f"rank {rank} of {os.environ.get('WORLD_SIZE')} sleeping")
        Path(self.pid_dir, f"rank{rank}.pid").write_text(str(os.getpid()))
        time.sleep(self.sleep_s)
        return {"rank": rank}


@dataclass(repr=False)
class MallocExp(TinyExp):
    """Reports whether this rank's launcher tuned glibc malloc before running it."""

    exp_name: str = "malloc"

    def train(self) -> dict[str, Any]:
        from tinyexp_core.launchers import runtime

        return {"rank": int(os.environ.get("RANK", "0")), "steady": runtime._steady_malloc}


class WhoAmIExp(TinyExp):
    """Reports the rank's process and what it had imported before its experiment module."""

    exp_name: str = "whoami"

    def train(self) -> dict[str, Any]:
        import torch

        names = ("OMP_NUM_THREADS", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK")
        names += ("ROLE_WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCH_NCCL_ASYNC_ERROR_HANDLING")
        return {
            "rank": int(os.environ.get("RANK", "0")),
            "pid": os.getpid(),
            "env": {name: os.environ.get(name) for name in names},
            "torch_threads": torch.get_num_threads(),
        }
