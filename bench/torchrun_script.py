"""A plain PyTorch DDP training script: what a user writes without TinyExp (issue 14).

The MNIST example's model (`Net`, copied so this file imports nothing of the project), on
the train split of a prepared dataset (`train.pt` / `val.pt`: `{"x": uint8 N x C x H x W,
"y": int64 N}`), normalized with the example's mean and std; `TensorDataset` +
`DistributedSampler` + `DataLoader`, batch 32 per rank, Adam (lr 1e-3) with the example's
StepLR (gamma 0.7 per epoch), gloo DDP, validation on each rank's shard of the val split
every epoch (losses and counts all-reduced), and `torch.save` of the model, optimizer and
scheduler every epoch (`last.pt`, plus `best.pt` when the val accuracy is the best so far),
as the pipeline's checkpoints do. Launch:

    torchrun --nproc-per-node 2 bench/torchrun_script.py --data PREPARED_DIR --out DIR

Rank 0 prints one line `TORCHRUN_SCRIPT_RESULT {json}`: each epoch's wall time (training,
validation, checkpoint and a barrier), the time from this process's start to its first
optimizer step, the unix times of the script start, the first step and every epoch end,
each epoch's training-loop seconds, and the val accuracies.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the imports, which are part of a script's start-up

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402

RESULT_PREFIX = "TORCHRUN_SCRIPT_RESULT "
MEAN, STD = 0.1307, 0.3081


class Net(nn.Module):
    """The classic PyTorch MNIST CNN, as `tinyexp_core.examples.mnist_exp.Net`."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(2 * dropout)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)


def load(data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A prepared split, normalized to float32."""
    tensors = torch.load(data / f"{split}.pt")
    return tensors["x"].float().div(255).sub(MEAN).div(STD), tensors["y"]


def validate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) over every rank's shard."""
    model.eval()
    loss, correct = torch.zeros(()), torch.zeros(())
    with torch.no_grad():
        for start in range(0, len(y), 512):
            logits = model(x[start : start + 512])
            loss += F.cross_entropy(logits, y[start : start + 512], reduction="sum")
            correct += (logits.argmax(1) == y[start : start + 512]).sum()
    totals = torch.tensor([float(loss), float(correct), float(len(y))], dtype=torch.float64)
    dist.all_reduce(totals)
    count = max(float(totals[2]), 1.0)
    return float(totals[0]) / count, float(totals[1]) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared dataset directory")
    parser.add_argument("--out", required=True, help="where checkpoints go")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        data, out = Path(args.data), Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        train = TensorDataset(*load(data, "train"))
        val_x, val_y = load(data, "val")
        val_x, val_y = val_x[rank::world_size], val_y[rank::world_size]
        sampler = DistributedSampler(train, shuffle=True, seed=0)
        loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)

        torch.manual_seed(0)
        model = DistributedDataParallel(Net(10, val_x.shape[1]))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.7)
        first_step, epoch_ends, train_s, accuracies = 0.0, [], [], []
        loop_start = time.time()
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            model.train()
            started = time.perf_counter()
            for xb, yb in loader:
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                first_step = first_step or time.time()
            train_s.append(time.perf_counter() - started)
            scheduler.step()
            _, accuracy = validate(model, val_x, val_y)
            accuracies.append(accuracy)
            if rank == 0:
                state = {
                    "model": model.module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "val_accuracy": accuracy,
                }
                torch.save(state, out / "last.pt")
                if accuracy >= max(accuracies):
                    torch.save(state, out / "best.pt")
            dist.barrier()
            epoch_ends.append(time.time())
    finally:
        dist.destroy_process_group()
    if rank == 0:
        bounds = [loop_start, *epoch_ends]
        result = {
            "epoch_wall_s": [b - a for a, b in zip(bounds, bounds[1:], strict=False)],
            "time_to_first_step_s": first_step - STARTED,
            "started": STARTED,
            "first_step": first_step,
            "epoch_ends": epoch_ends,
            "train_loop_s": train_s,
            "val_accuracy": accuracies,
            "world_size": world_size,
            "pid": os.getpid(),
        }
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
