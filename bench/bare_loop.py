"""The bare PyTorch loop the orchestrated paths are compared with (issue 7, items 1 and 2).

The MNIST example's network (`tinyexp_core.examples.mnist_exp.Net`), Adam and cross-entropy
over the train split of a prepared dataset, batched by plain tensor indexing: nothing of
TinyExp's loop, accelerator, launcher or progress reporting. Runs alone or under torchrun
(DDP over gloo, sharded like `DistributedSampler`):

    .venv/bin/python -m bench.bare_loop --data PREPARED_DIR [--epochs 3] [--threads 1]
    .venv/bin/torchrun --nproc-per-node 2 -m bench.bare_loop --data PREPARED_DIR

Rank 0 prints one line `BARE_LOOP_RESULT {json}` with the samples/s of every epoch (all
ranks' samples over rank 0's epoch time, as the example computes it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULT_PREFIX = "BARE_LOOP_RESULT "
MEAN, STD = 0.1307, 0.3081  # the example's normalization (DataCfg.mean / std)


def load_train(prepared_path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The uint8 images and int64 labels of a prepared dataset's train split."""
    data = torch.load(Path(prepared_path) / "train.pt")
    return data["x"], data["y"]


def shard(num_samples: int, epoch: int, seed: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's shuffled indices for one epoch, padded like DistributedSampler."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed + epoch))
    per_rank = math.ceil(num_samples / world_size)
    total = per_rank * world_size
    if total > num_samples:
        order = order.repeat(math.ceil(total / num_samples))
    return order[:total][rank:total:world_size]


class Turns:
    """Epoch turns between jobs running at the same time, so that all see the same machine:
    a job trains an epoch only while the turn file names it, then hands the turn to the next
    job of the cycle (`then`). Rank 0 of each job watches the file (a waiting job sleeps);
    the other ranks wait at a barrier."""

    def __init__(self, path: str, me: str, then: str, timeout_s: float = 900.0) -> None:
        self.path, self.me, self.then, self.timeout_s = Path(path), me, then, timeout_s

    def wait(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while self.path.read_text() != self.me:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.me}: no turn in {self.path} for {self.timeout_s} s")
            time.sleep(0.005)

    def hand_over(self) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{self.me}")
        tmp.write_text(self.then)
        os.replace(tmp, self.path)


def _sync(turns: Turns | None, rank: int, world_size: int, start: bool) -> None:
    if turns is None:
        return
    if start and rank == 0:
        turns.wait()
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    if not start and rank == 0:
        turns.hand_over()


def train_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    num_epochs: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    device: str = "cpu",
    bf16: bool = False,
    mean: float = MEAN,
    std: float = STD,
    turns: Turns | None = None,
    cpu_rates: list[float] | None = None,
) -> list[float]:
    """Train `num_epochs` epochs; returns each epoch's samples/s over all ranks.

    Batches are cut and normalized on the CPU and then moved, as the examples' loader does.
    `bf16`: autocast to bfloat16 on CUDA (the accelerators' mixed precision). `turns`: take
    turns with other jobs, one epoch each (the waits are outside the timed epoch).
    `cpu_rates`: also append each epoch's samples per CPU-second of this thread (less
    sensitive than wall time to other processes on the machine; blind to waits on peers).
    """
    cuda = device.startswith("cuda")
    rates = []
    for epoch in range(num_epochs):
        idx = shard(len(y), epoch, seed, rank, world_size)
        model.train()
        _sync(turns, rank, world_size, start=True)
        start, start_cpu = time.perf_counter(), time.thread_time()
        for i in range(0, len(idx), batch_size):
            batch = idx[i : i + batch_size]
            xb = x[batch].float().div_(255).sub_(mean).div_(std).to(device, non_blocking=True)
            yb = y[batch].to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and cuda):
                loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        rates.append(len(idx) * world_size / (time.perf_counter() - start))
        if cpu_rates is not None:
            cpu_rates.append(len(idx) * world_size / (time.thread_time() - start_cpu))
        _sync(turns, rank, world_size, start=False)
    return rates


def build_model(
    in_channels: int, arch: str = "mnist", device: str = "cpu"
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """An example's network (`mnist`: the MNIST example's; `resnet18`: the ResNet example's),
    seeded as the examples seed it, and Adam at their default lr."""
    torch.manual_seed(0)
    if arch == "mnist":
        from tinyexp_core.examples.mnist_exp import Net

        model = Net(10, in_channels)
    else:
        from tinyexp_core.examples.resnet_exp import Exp as ResNetExp

        model = ResNetExp.ModuleCfg(arch=arch).build_module(in_channels)
    model = model.to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared dataset directory")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--arch", choices=("mnist", "resnet18", "resnet34"), default="mnist")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--mean", type=float, default=MEAN)
    parser.add_argument("--std", type=float, default=STD)
    parser.add_argument("--turn-file", default="", help="take epoch turns with other jobs")
    parser.add_argument("--turn-names", nargs=2, default=("bare", "other"), help="me, next")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.device == "cuda" else "cpu"
    if args.device == "cuda":
        torch.cuda.set_device(device)
    x, y = load_train(args.data)
    model, optimizer = build_model(x.shape[1], args.arch, device)
    if world_size > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        backend = "nccl" if args.device == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        model = DistributedDataParallel(model)
    cpu_rates: list[float] = []
    try:
        rates = train_epochs(
            model,
            optimizer,
            x,
            y,
            batch_size=args.batch_size,
            num_epochs=args.epochs,
            rank=rank,
            world_size=world_size,
            device=device,
            bf16=args.bf16,
            mean=args.mean,
            std=args.std,
            turns=Turns(args.turn_file, *args.turn_names) if args.turn_file else None,
            cpu_rates=cpu_rates,
        )
    finally:
        if world_size > 1:
            dist.destroy_process_group()
    if rank == 0:
        result = {"samples_per_s": rates, "cpu_samples_per_s": cpu_rates}
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def parse_result(stdout: str) -> dict:
    """The result line of a bare-loop run's stdout."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"no {RESULT_PREFIX.strip()} line in:\n{stdout[-2000:]}")


if __name__ == "__main__":
    sys.exit(main())
