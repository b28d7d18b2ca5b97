"""Samplers and loader wrappers kept with their TinyExp 0.0.1 names and behaviour."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from tinyexp_core.config.exceptions import ConfigValueError


class InfiniteSampler(Sampler[int]):
    """An endless, rank-sharded stream `shuffle(range(size)) + shuffle(range(size)) + ...`.

    Every rank walks the same seeded stream and keeps `stream[rank::world_size]`, so within
    one pass of the stream no two ranks see the same index. `accelerator` (TinyExp 0.0.1
    style) overrides rank/world_size with its `rank`/`world_size` (or
    `local_process_index`/`num_processes`) attributes.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        accelerator: Any = None,
    ) -> None:
        if accelerator is not None:
            rank, world_size = _rank_of(accelerator)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigValueError("size", size, "an integer >= 1")
        if world_size < 1:
            raise ConfigValueError("world_size", world_size, "an integer >= 1")
        if not 0 <= rank < world_size:
            raise ConfigValueError("rank", rank, f"an integer with 0 <= rank < {world_size}")
        self._size = size
        self._shuffle = shuffle
        self._seed = int(seed)
        self._rank = rank
        self._world_size = world_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        """Do nothing: the stream is endless, epochs do not restart it (as in TinyExp)."""

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        # One generator seeded once: each pass draws a fresh permutation, identically on
        # every rank.
        generator = torch.Generator().manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=generator).tolist()
            else:
                yield from range(self._size)

    def __len__(self) -> int:
        if self.drop_last:
            return self._size // self._world_size
        return (self._size + self._world_size - 1) // self._world_size


def _rank_of(accelerator: Any) -> tuple[int, int]:
    if hasattr(accelerator, "rank") and hasattr(accelerator, "world_size"):
        return int(accelerator.rank), int(accelerator.world_size)
    return int(accelerator.local_process_index), int(accelerator.num_processes)


class HoldOnesampleDataLoader:
    """Fetch one batch from `dataloader` and yield copies of it forever (or `num_steps` times).

    Measures pure compute without input cost, and checks that a model can overfit one batch.
    """

    def __init__(self, dataloader: Iterable[Any], num_steps: int | None = None) -> None:
        if num_steps is not None and num_steps < 1:
            raise ConfigValueError("num_steps", num_steps, "None (endless) or an integer >= 1")
        self.dataloader = dataloader
        self.num_steps = num_steps
        try:
            self.sample = next(iter(dataloader))
        except StopIteration:
            raise ConfigValueError("dataloader", dataloader, "a loader with >= 1 batch") from None

    def __iter__(self) -> Iterator[Any]:
        steps = itertools.count() if self.num_steps is None else range(self.num_steps)
        for _ in steps:
            # A copy per step: in-place ops of one step must not leak into the next.
            yield copy.deepcopy(self.sample)

    def __len__(self) -> int:
        if self.num_steps is not None:
            return self.num_steps
        return len(self.dataloader)  # type: ignore[arg-type]
