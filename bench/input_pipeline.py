"""Input pipeline: the prepared-dataset loader vs what a user would write (issue 7 item 4,
issue 14).

MNIST-style data: `TensorBatchLoader` (what the examples train from: one uint8 tensor,
one indexing op and one normalization per batch) against, on the same train split, batch
32, shuffled, no worker processes:

- `TensorDataset` + `DataLoader`: the baseline of a user with in-memory tensors (normalized
  to float32 once, up front, outside the timing; per-sample indexing, default collate);
- a `DataLoader` over a `BatchSampler` (the same `TensorDataset` indexed by a list of 32
  indices per batch, `batch_size=None`: one indexing op per batch, like ours);
- a torchvision-style per-sample `DataLoader` (PIL image of each uint8 sample, then
  `ToTensor()` + `Normalize`): target >= 10x;
- what the training loop consumes (the bare loop of `bench/bare_loop.py` on the same
  batches, 1 torch thread): target >= 20x.

ResNet-style data: `load_image_folder` (dataset preparation) decoding PNGs from disk vs the
same folder served from a warm `RedisSampleCache` in batches (an embedded redis-server in a
temporary directory).

A round runs every side once, in rotating order, and `TensorBatchLoader` twice (its second
run is the A/A control of every MNIST ratio); the ResNet sides likewise with disk decoding
twice. Pairs are rounds.

    .venv/bin/python -m bench.input_pipeline [--rounds 10] [--num-samples 8192]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.bare_loop import MEAN, STD, build_model, load_train, train_epochs
from bench.common import prepare_data
from bench.results import Run, add_results_arg
from bench.stats import compare

TARGET_VS_PER_SAMPLE, TARGET_VS_TRAINING = 10.0, 20.0
BATCH = 32
OURS, OURS_AA = "TensorBatchLoader", "TensorBatchLoader (A/A)"
DISK, DISK_AA = "decode from disk", "decode from disk (A/A)"


class PerSampleDataset(torch.utils.data.Dataset):
    """torchvision's MNIST recipe: uint8 sample -> PIL image -> ToTensor -> Normalize."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from torchvision import transforms

        self.x = x[:, 0].numpy()  # N x H x W, one channel
        self.y = y
        self.transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
        )

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = Image.fromarray(self.x[index])  # 2-D uint8: mode "L", as MNIST's
        return self.transform(image), int(self.y[index])


def rate(fn: Callable[[], int], min_s: float = 0.5) -> float:
    """Samples/s of `fn` (which returns how many samples it produced), repeated >= min_s."""
    count, start = 0, time.perf_counter()
    while True:
        count += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return count / elapsed


def drain(loader: object) -> int:
    return sum(len(y) for _, y in loader)


def mnist_sides(x: torch.Tensor, y: torch.Tensor, steps: int) -> dict[str, Callable[[], int]]:
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    from tinyexp_core.data import TensorBatchLoader

    tensor_loader = TensorBatchLoader(x, y, BATCH, shuffle=True, mean=MEAN, std=STD)
    normalized = TensorDataset(x.float().div(255).sub(MEAN).div(STD), y)
    tensor_dataset = DataLoader(normalized, batch_size=BATCH, shuffle=True)
    batch_sampler = DataLoader(
        normalized, sampler=BatchSampler(RandomSampler(normalized), BATCH, False), batch_size=None
    )
    per_sample = DataLoader(PerSampleDataset(x, y), batch_size=BATCH, shuffle=True)
    model, optimizer = build_model(x.shape[1])
    subset = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[: steps * BATCH]
    xs, ys = x[subset], y[subset]

    def train() -> int:
        train_epochs(model, optimizer, xs, ys, batch_size=BATCH, num_epochs=1)
        return len(ys)

    return {
        OURS: lambda: drain(tensor_loader),
        OURS_AA: lambda: drain(tensor_loader),
        "TensorDataset + DataLoader": lambda: drain(tensor_dataset),
        "DataLoader over a BatchSampler": lambda: drain(batch_sampler),
        "per-sample DataLoader (PIL)": lambda: drain(per_sample),
        "training loop": train,
    }


def make_image_folder(root: Path, num_images: int, size: int, num_classes: int = 10) -> None:
    """`num_images` random RGB PNGs of size x size in `num_classes` class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(num_images):
        folder = root / f"class_{index % num_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.png")


def image_folder_sides(folder: Path, url: str, image_size: int) -> dict[str, Callable[[], int]]:
    """Re-preparation, what the cache is for: `load_image_folder` from a warm cache (one
    MGET per 256 samples) vs decoding every image from disk."""
    from bench.common import redis_client
    from tinyexp_core.data import RedisSampleCache, load_image_folder

    client = redis_client(url, decode_responses=False)
    cache = RedisSampleCache(client, "bench", ttl_s=3600)
    warmed = load_image_folder(folder, image_size, cache=cache)  # warm the cache
    if cache.misses != len(warmed.y):
        raise RuntimeError(f"warm-up: {cache.misses} misses for {len(warmed.y)} samples")

    def load(with_cache: bool) -> int:
        return len(load_image_folder(folder, image_size, cache=cache if with_cache else None).y)

    return {
        DISK: lambda: load(False),
        DISK_AA: lambda: load(False),
        "warm Redis cache": lambda: load(True),
    }


def interleave(
    sides: dict[str, Callable[[], int]], rounds: int, min_s: float
) -> dict[str, list[float]]:
    """Samples/s of every side per round, after one warm-up round; rotating order."""
    names = list(sides)
    for name in names:
        sides[name]()
    rates: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            rates[name].append(rate(sides[name], min_s))
    return rates


def comparisons(mnist: dict[str, list[float]], images: dict[str, list[float]]) -> list[dict]:
    """Ours over each baseline, per round, with TensorBatchLoader's A/A."""
    aa = (mnist[OURS_AA], mnist[OURS])
    targets = {
        "TensorDataset + DataLoader": None,
        "DataLoader over a BatchSampler": None,
        "per-sample DataLoader (PIL)": TARGET_VS_PER_SAMPLE,
        "training loop": TARGET_VS_TRAINING,
    }
    out = [
        compare(
            f"4. TensorBatchLoader / {name}, samples/s",
            mnist[OURS],
            mnist[name],
            target=target,
            direction="higher",
            control=aa,
            what=f"samples/s of TensorBatchLoader over {name}, per round",
        )
        for name, target in targets.items()
    ]
    out.append(
        compare(
            "4. warm Redis cache / decode from disk (ResNet data), samples/s",
            images["warm Redis cache"],
            images[DISK],
            target=None,
            direction="higher",
            control=(images[DISK_AA], images[DISK]),
            what="samples/s of load_image_folder from the warm cache over decoding, per round",
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="pairs (>= 2 for an interval)")
    parser.add_argument("--num-samples", type=int, default=8192, help="synthetic samples")
    parser.add_argument("--train-steps", type=int, default=20, help="bare-loop steps per sample")
    parser.add_argument("--images", type=int, default=512, help="PNGs in the image folder")
    parser.add_argument("--png-size", type=int, default=64, help="PNG side, pixels")
    parser.add_argument("--image-size", type=int, default=32, help="decoded side, pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--min-s", type=float, default=0.5, help="seconds per measurement")
    add_results_arg(parser)
    args = parser.parse_args(argv)

    from bench.common import embedded_redis

    torch.set_num_threads(args.threads)
    run = Run("input_pipeline", {k: v for k, v in vars(args).items() if k != "results_dir"})
    with tempfile.TemporaryDirectory(prefix="bench-input-") as name:
        tmp = Path(name)
        x, y = load_train(prepare_data(tmp / "datasets", "synthetic", args.num_samples))
        mnist = interleave(mnist_sides(x, y, args.train_steps), args.rounds, args.min_s)
        make_image_folder(tmp / "images", args.images, args.png_size)
        with embedded_redis(tmp / "redis-root") as url:
            sides = image_folder_sides(tmp / "images", url, args.image_size)
            images = interleave(sides, args.rounds, args.min_s)
    medians = ", ".join(f"{k} {statistics.median(v):,.0f}" for k, v in {**mnist, **images}.items())
    notes = (
        f"MNIST-style: the train split of {args.num_samples} prepared synthetic 1x28x28 "
        f"samples ({len(y)} samples), batch {BATCH}, shuffled, {args.threads} torch "
        "thread(s), `num_workers=0` everywhere. The `TensorDataset` baselines hold the split "
        "normalized to float32 (done once, outside the timing); `TensorBatchLoader` "
        "normalizes each uint8 batch. The per-sample DataLoader follows torchvision's MNIST "
        f"recipe (PIL mode L, `ToTensor()`, `Normalize`). The training loop is the bare loop "
        f"(forward, backward, Adam) over {args.train_steps} batches. ResNet-style: "
        f"{args.images} random RGB PNGs of {args.png_size}x{args.png_size}, decoded to "
        f"3x{args.image_size}x{args.image_size} by `load_image_folder` (the ResNet "
        "example's dataset preparation, which is where the cache is used), from disk or "
        "from a warm `RedisSampleCache` (one MGET per 256 samples; runs before issue 24 "
        "measured one GET per sample: 0.81x, slower than the disk). Whether the cache "
        "speeds up re-preparation is what this line says; training steps never read it. "
        f"Each figure: samples/s over >= {args.min_s:g} s; {args.rounds} rounds after "
        f"a warm-up round, in rotating order. Median samples/s: {medians}."
    )
    raw = {"samples_per_s": {**mnist, **images}}
    run.save(raw, comparisons(mnist, images), args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
