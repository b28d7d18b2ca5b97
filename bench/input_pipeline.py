"""Input pipeline: the prepared-dataset loader vs per-sample loading (issue 7, item 4).

MNIST-style data: `TensorBatchLoader` (what the examples train from: one uint8 tensor,
one indexing op and one normalization per batch) vs a torchvision-style `DataLoader` over
the same train split (a Dataset whose `__getitem__` makes a PIL image of the uint8 sample,
then `transforms.ToTensor()` + `Normalize`, batch 32, shuffled, default collate, no worker
processes), and vs what the training loop consumes (the bare loop of `bench/bare_loop.py`
on the same batches, 1 torch thread). Targets: loader >= 10x the per-sample DataLoader and
>= 20x the training loop's consumption.

ResNet-style data: `ImageFolderDataset` decoding PNGs from an image folder on disk vs the
same dataset served from a warm `RedisSampleCache` (an embedded redis-server in a temporary
directory). Rounds alternate the order of the sides; ratios are medians of per-round ratios.

    .venv/bin/python -m bench.input_pipeline [--rounds 5] [--num-samples 8192]
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
from bench.common import (
    load_average,
    markdown_table,
    prepare_data,
    report_result,
    verdict,
    write_section,
)

TARGET_VS_PER_SAMPLE, TARGET_VS_TRAINING = 10.0, 20.0
BATCH = 32


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
    from tinyexp_core.data import TensorBatchLoader

    tensor_loader = TensorBatchLoader(x, y, BATCH, shuffle=True, mean=MEAN, std=STD)
    per_sample = torch.utils.data.DataLoader(PerSampleDataset(x, y), batch_size=BATCH, shuffle=True)
    model, optimizer = build_model(x.shape[1])
    subset = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[: steps * BATCH]
    xs, ys = x[subset], y[subset]

    def train() -> int:
        train_epochs(model, optimizer, xs, ys, batch_size=BATCH, num_epochs=1)
        return len(ys)

    return {
        "TensorBatchLoader": lambda: drain(tensor_loader),
        "per-sample DataLoader": lambda: drain(per_sample),
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
    from tinyexp_core.data import ImageFolderDataset, RedisSampleCache
    from tinyexp_core.redis_client import make_client

    client = make_client(url, decode_responses=False)
    cache = RedisSampleCache(client, "bench", ttl_s=3600)
    cached = ImageFolderDataset(folder, image_size, cache=cache)
    disk = ImageFolderDataset(folder, image_size)
    for index in range(len(cached)):  # warm the cache
        cached[index]
    if cache.misses != len(cached):
        raise RuntimeError(f"warm-up: {cache.misses} misses for {len(cached)} samples")

    def read_all(dataset: ImageFolderDataset) -> int:
        for index in range(len(dataset)):
            dataset[index]
        return len(dataset)

    return {
        "decode from disk": lambda: read_all(disk),
        "warm Redis cache": lambda: read_all(cached),
    }


def interleave(sides: dict[str, Callable[[], int]], rounds: int) -> dict[str, list[float]]:
    names = list(sides)
    for name in names:  # warm-up
        sides[name]()
    rates: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            rates[name].append(rate(sides[name]))
    return rates


def ratio(rates: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-samples", type=int, default=8192, help="synthetic samples")
    parser.add_argument("--train-steps", type=int, default=20, help="bare-loop steps per sample")
    parser.add_argument("--images", type=int, default=512, help="PNGs in the image folder")
    parser.add_argument("--png-size", type=int, default=64, help="PNG side, pixels")
    parser.add_argument("--image-size", type=int, default=32, help="decoded side, pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)

    from tinyexp_core.redis_server import EmbeddedRedis

    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), load_average()
    with tempfile.TemporaryDirectory(prefix="bench-input-") as name:
        tmp = Path(name)
        x, y = load_train(prepare_data(tmp / "datasets", "synthetic", args.num_samples))
        mnist = interleave(mnist_sides(x, y, args.train_steps), args.rounds)
        make_image_folder(tmp / "images", args.images, args.png_size)
        server = EmbeddedRedis(tmp / "redis-root")
        try:
            url = server.ensure()
            images = interleave(
                image_folder_sides(tmp / "images", url, args.image_size), args.rounds
            )
        finally:
            server.stop()
    vs_per_sample = ratio(mnist, "TensorBatchLoader", "per-sample DataLoader")
    vs_training = ratio(mnist, "TensorBatchLoader", "training loop")
    cache_vs_disk = ratio(images, "warm Redis cache", "decode from disk")
    rows = [[name, f"{statistics.median(r):,.0f}"] for name, r in {**mnist, **images}.items()]
    ratio_rows = [
        [
            "TensorBatchLoader / per-sample DataLoader",
            f"**{vs_per_sample:.1f}x**",
            f">= {TARGET_VS_PER_SAMPLE:g}x",
            verdict(vs_per_sample, TARGET_VS_PER_SAMPLE),
        ],
        [
            "TensorBatchLoader / training loop consumption",
            f"**{vs_training:.1f}x**",
            f">= {TARGET_VS_TRAINING:g}x",
            verdict(vs_training, TARGET_VS_TRAINING),
        ],
        [
            "warm Redis cache / decode from disk (ResNet data)",
            f"**{cache_vs_disk:.1f}x**",
            "-",
            "-",
        ],
    ]
    body = (
        markdown_table(["source", "samples/s (median)"], rows)
        + "\n\n"
        + markdown_table(["ratio", "value", "target", "verdict"], ratio_rows)
        + "\n\n"
        f"MNIST-style: the train split of {args.num_samples} prepared synthetic 1x28x28 samples "
        f"({len(y)} samples), batch {BATCH}, shuffled, {args.threads} torch thread(s). The "
        "per-sample DataLoader follows torchvision's MNIST recipe (`Image.fromarray` of the "
        "2-D uint8 sample, mode L; `ToTensor()`, `Normalize`; default collate; "
        "`num_workers=0`). The "
        f"training loop is the bare loop (forward, backward, Adam) over {args.train_steps} "
        f"batches. ResNet-style: {args.images} random RGB PNGs of {args.png_size}x"
        f"{args.png_size} in 10 class folders, decoded to 3x{args.image_size}x{args.image_size} "
        "uint8 by `ImageFolderDataset`, from disk (PIL decode + bilinear resize) or from a "
        "warm `RedisSampleCache` (one GET and a memcpy per sample, loopback redis-server). "
        "The ResNet example decodes its folder once, at dataset preparation, so the cache "
        "speeds up re-preparation, not training steps. Each figure: samples/s over >= 0.5 s, "
        f"median of {args.rounds} rounds in rotating order.\n\n"
        f"Load average before / after: {load_before} / {load_average()}. "
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s."
    )
    for item, value, target in (
        (
            "4. Input: TensorBatchLoader / per-sample DataLoader",
            vs_per_sample,
            TARGET_VS_PER_SAMPLE,
        ),
        ("4. Input: TensorBatchLoader / training consumption", vs_training, TARGET_VS_TRAINING),
    ):
        report_result(item, f"{value:.1f}x", f">= {target:g}x", verdict(value, target))
    report_result(
        "4. Input: warm Redis cache / disk decode (ResNet)", f"{cache_vs_disk:.1f}x", "-", "-"
    )
    command = f".venv/bin/python -m bench.input_pipeline --rounds {args.rounds}"
    if args.no_write:
        print(body)
    else:
        write_section("input_pipeline", "4. Input pipeline", body, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
