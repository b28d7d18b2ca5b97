"""The accelerator protocol and the torch.distributed implementation shared by CPU and DDP.

An accelerator owns the process group it creates (and only that one): `destroy()`
tears it down and is idempotent. Collectives have a timeout so a hung or dead rank
fails the run instead of blocking it forever.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist

DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0


@runtime_checkable
class Accelerator(Protocol):
    """What an experiment's training loop may rely on, whatever the backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main_process(self) -> bool: ...

    def prepare(self, model: Any, optimizer: Any = None) -> Any: ...

    def prepare_model(self, model: Any) -> Any: ...

    def prepare_optimizer(self, optimizer: Any) -> Any: ...

    def unwrap_model(self, model: Any) -> Any: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def gather(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def wait_for_everyone(self) -> None: ...

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def print(self, *args: Any, **kwargs: Any) -> None: ...

    def destroy(self) -> None: ...


def env_rank_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun / Ray launcher environment."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def collective_timeout_s(timeout_s: float | None) -> float:
    """The timeout given (by `AcceleratorCfg.collective_timeout_s`), else the default.

    Never read from the environment: the run record (config.yaml, checkpoints) states
    the timeout that ran, so nothing outside the config may change it.
    """
    return DEFAULT_COLLECTIVE_TIMEOUT_S if timeout_s is None else float(timeout_s)


def _loopback_store(rank: int, world_size: int, timeout: datetime.timedelta) -> Any:
    """The rendezvous store of a job whose ranks all run on this host, else None (env://).

    torch's own rendezvous server (rank 0) listens on every interface even when
    MASTER_ADDR is 127.0.0.1; bound here to MASTER_ADDR, it listens on loopback only.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return None  # torchrun's agent already serves the store on MASTER_PORT: join it
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    try:
        loopback = addr == "localhost" or ipaddress.ip_address(addr).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    host = "127.0.0.1" if addr == "localhost" else addr
    listen_fd = None
    if rank == 0:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen()
        except OSError:
            sock.close()
            raise
        listen_fd = sock.detach()  # the store owns (and closes) the socket from here
    return dist.TCPStore(
        host,
        port,
        world_size,
        rank == 0,
        timeout,
        master_listen_fd=listen_fd,
    )


class TorchDistributedAccelerator:
    """torch.distributed data parallel on one backend (`gloo` or `nccl`)."""

    backend: str = "gloo"

    def __init__(self, *, timeout_s: float | None = None, mixed_precision: bool = False) -> None:
        self.rank, self.world_size, self.local_rank = env_rank_info()
        self.timeout_s = collective_timeout_s(timeout_s)
        self.mixed_precision = mixed_precision
        self.device = self._select_device()
        self.sync_gradients = True
        self._owns_group = False
        self._destroyed = False
        if self.world_size > 1:
            self._init_process_group()

    def _select_device(self) -> torch.device:
        return torch.device("cpu")

    def _init_process_group(self) -> None:
        if dist.is_initialized():
            return  # someone else (torchrun user code, a test) owns it
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        timeout = datetime.timedelta(seconds=self.timeout_s)
        dist.init_process_group(
            backend=self.backend,
            store=_loopback_store(self.rank, self.world_size, timeout),
            rank=self.rank,
            world_size=self.world_size,
            timeout=timeout,
        )
        self._owns_group = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_initialized()

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_rank == 0

    # ------------------------------------------------------------------ model
    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # DDP broadcasts rank 0's parameters at construction, so ranks start identical.
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def prepare_optimizer(self, optimizer: Any) -> Any:
        return optimizer

    def prepare(self, model: Any, optimizer: Any = None) -> Any:
        model = self.prepare_model(model)
        if optimizer is None:
            return model
        return model, self.prepare_optimizer(optimizer)

    def unwrap_model(self, model: Any) -> Any:
        return getattr(model, "module", model)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.mixed_precision and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ collectives
    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().clone().to(self.device)
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        summed = self.reduce_sum(tensor.float() if not tensor.is_floating_point() else tensor)
        return summed / self.world_size

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's tensor (same shape on all ranks) along dim 0."""
        tensor = tensor.detach().to(self.device)
        if tensor.dim() == 0:
            tensor = tensor.reshape(1)
        if not self.distributed:
            return tensor.clone()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def wait_for_everyone(self) -> None:
        if self.distributed:
            dist.barrier()

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.is_main_process:
            print(*args, **kwargs)

    def destroy(self) -> None:
        """Tear down the process group this accelerator created; safe to call twice."""
        if self._destroyed:
            return
        self._destroyed = True
        if self._owns_group and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        self._owns_group = False

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
