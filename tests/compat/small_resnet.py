"""Run a TinyExp 0.0.1 example script with torchvision's `resnet50` swapped for a small
network: `python -m tests.compat.small_resnet SCRIPT [OVERRIDES ...]`.

Everything else is the script's own code, run as `__main__` (its config, loaders, Redis
cache, hard-coded epochs, evaluation, logs); only the network it builds by name
(`models.__dict__["resnet50"]`) costs a thousandth of ResNet-50's compute at 224 px.
CI's short variant of `test_resnet_example_trains_with_its_redis_cache` uses it.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch.nn as nn
import torchvision.models as models


def small_resnet50(weights=None, num_classes: int = 1000) -> nn.Module:
    """Same call and output shape as `torchvision.models.resnet50(weights=None)`."""
    if weights is not None:
        raise ValueError(f"small_resnet50 has no pretrained weights, got {weights!r}")
    return nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=8, stride=8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m tests.compat.small_resnet SCRIPT [OVERRIDES ...]")
    script = Path(sys.argv[1]).resolve()
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.parent))  # as `python SCRIPT` would
    models.resnet50 = small_resnet50
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
