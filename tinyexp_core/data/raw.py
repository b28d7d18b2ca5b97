"""RawDataset: one source's images and labels in memory, before any split.

Its own module so that the sources and the loaders they dispatch to (`image_folder`) both
depend on it without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RawDataset:
    """Images and labels of one source, fully in memory, before any split."""

    x: torch.Tensor  # uint8, N x C x H x W
    y: torch.Tensor  # int64, N
    num_classes: int
    source: str
    params: dict[str, Any] = field(default_factory=dict)  # JSON-able arguments that produced it

    def __len__(self) -> int:
        return int(self.y.shape[0])
