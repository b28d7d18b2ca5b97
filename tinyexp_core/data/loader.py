"""A batch loader over in-memory tensors, sharded across DDP ranks.

The whole split lives in one uint8 tensor, so a batch is one fancy-indexing op plus one
normalization: no per-sample Python work, no worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.data.prepared import load_split

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class TensorBatchLoader:
    """Yield normalized `(x float32, y int64)` batches of one rank's shard, per epoch."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
    ) -> None:
        _check_args(x, y, batch_size, rank, world_size, std)
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.mean = mean
        self.std = std
        self.epoch = 0
        self.start_step = 0
        self.num_samples = _samples_per_rank(self.dataset_size, world_size, drop_last)

    @property
    def dataset_size(self) -> int:
        """Number of samples in the whole split (all ranks together)."""
        return int(self.y.shape[0])

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch whose permutation the next iteration uses (same on all ranks).

        `start_step` batches of it are skipped: a run resumed mid-epoch sees the rest of
        the very order an uninterrupted run sees (the permutation is a function of
        `seed + epoch` alone).
        """
        if isinstance(start_step, bool) or not 0 <= start_step <= len(self):
            raise ConfigValueError("start_step", start_step, f"an integer in [0, {len(self)}]")
        self.epoch = epoch
        self.start_step = int(start_step)

    def __len__(self) -> int:
        # Identical on every rank because num_samples is: unequal batch counts hang DDP.
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> torch.Tensor:
        """Return this rank's sample indices for the current epoch, in batch order."""
        n = self.dataset_size
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:
            # Pad by repeating from the start, as DistributedSampler does.
            order = order.repeat(math.ceil(total / n))
        return order[:total][self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.indices()
        for batch in range(self.start_step, len(self)):
            batch_idx = idx[batch * self.batch_size : (batch + 1) * self.batch_size]
            x = self.x[batch_idx].float().div_(255).sub_(self.mean).div_(self.std)
            yield x, self.y[batch_idx]


def _check_args(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, rank: int, world_size: int, std: float
) -> None:
    if x.dtype != torch.uint8 or x.dim() < 2:
        # The normalization below assumes 0..255 pixel values.
        raise ConfigValueError("x", f"{x.dtype} {tuple(x.shape)}", "a uint8 tensor N x ...")
    if x.shape[0] != y.shape[0]:
        raise ConfigValueError("y", f"{y.shape[0]} labels", f"one label per image ({x.shape[0]})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigValueError("batch_size", batch_size, "an integer >= 1")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigValueError("world_size", world_size, "an integer >= 1")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigValueError("rank", rank, f"an integer with 0 <= rank < {world_size}")
    if not std > 0:
        raise ConfigValueError("std", std, "a number > 0")


def _samples_per_rank(n: int, world_size: int, drop_last: bool) -> int:
    # Same arithmetic as torch.utils.data.DistributedSampler.
    if drop_last and n % world_size:
        return math.ceil((n - world_size) / world_size)
    return math.ceil(n / world_size)


def prepared_loader(
    path: str | Path,
    split: str,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool | None = None,
    seed: int = 0,
    drop_last: bool | None = None,
    verify: bool = True,
    mean: float = MNIST_MEAN,
    std: float = MNIST_STD,
) -> TensorBatchLoader:
    """Load one split of a prepared dataset into a TensorBatchLoader.

    Defaults: the train split is shuffled, val/test are not; nothing is dropped.
    """
    x, y = load_split(path, split, verify=verify)
    return TensorBatchLoader(
        x,
        y,
        batch_size,
        rank=rank,
        world_size=world_size,
        shuffle=split == "train" if shuffle is None else shuffle,
        seed=seed,
        drop_last=False if drop_last is None else drop_last,
        mean=mean,
        std=std,
    )
