"""Dataset sources: each turns its arguments into one in-memory uint8 `RawDataset`.

Nothing here downloads: digits ships with scikit-learn, MNIST and image folders are read
from local files, synthetic data is generated from a seed.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyexp_core.config.exceptions import (
    ConfigValueError,
    DatasetCorruptError,
    DatasetNotFoundError,
)
from tinyexp_core.data.raw import RawDataset

SOURCES = ("digits", "mnist", "synthetic", "image_folder")

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
DEFAULT_SYNTHETIC_SAMPLES = 2048

# Resizing and noise generation work on float copies; chunking bounds that memory for
# large datasets (70k MNIST images, big synthetic benchmark sets).
_CHUNK = 8192


def load_source(
    source: str,
    *,
    root: str = "",
    seed: int = 0,
    num_samples: int = 0,
    image_size: int = 28,
    num_classes: int = 10,
) -> RawDataset:
    """Load one dataset source into memory.

    `root` is the directory of `mnist` and `image_folder`; `num_classes` is used by
    `synthetic` only (the other sources know their classes). `num_samples` = 0 means all
    samples (2048 for synthetic); otherwise a seeded random subset of a real source.
    """
    if source not in SOURCES:
        raise ConfigValueError("source", source, SOURCES)
    _check_int_at_least("num_samples", num_samples, 0)
    _check_int_at_least("image_size", image_size, 1)
    if source == "synthetic":
        return _load_synthetic(seed, num_samples, image_size, num_classes)
    raw = _REAL_SOURCES[source](root, image_size)
    return _subset(raw, num_samples, seed)


def _check_int_at_least(key: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigValueError(key, value, f"an integer >= {minimum}")


def _subset(raw: RawDataset, num_samples: int, seed: int) -> RawDataset:
    if num_samples == 0 or num_samples == len(raw):
        return raw
    if num_samples > len(raw):
        allowed = f"0 (all) or 1..{len(raw)} (the size of {raw.source!r})"
        raise ConfigValueError("num_samples", num_samples, allowed)
    generator = torch.Generator().manual_seed(seed)
    # Sorted so the subset keeps the source order; only membership is random.
    idx = torch.randperm(len(raw), generator=generator)[:num_samples].sort().values
    params = {**raw.params, "num_samples": num_samples, "seed": seed}
    return RawDataset(raw.x[idx].clone(), raw.y[idx].clone(), raw.num_classes, raw.source, params)


def resize_uint8(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinearly resize N x C x H x W images (values 0..255) to square uint8 images."""
    if x.dtype == torch.uint8 and tuple(x.shape[-2:]) == (image_size, image_size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in range(0, x.shape[0], _CHUNK):
        chunk = x[start : start + _CHUNK].float()
        chunk = F.interpolate(
            chunk, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
        out[start : start + _CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _load_digits(root: str, image_size: int) -> RawDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # load_digits holds 0..16 intensities; scale to the 0..255 range of every other source.
    images = torch.from_numpy(digits.images).float().mul_(255.0 / 16.0).unsqueeze(1)
    x = resize_uint8(images, image_size)
    y = torch.from_numpy(digits.target).long()
    return RawDataset(x, y, 10, "digits", {"image_size": image_size})


def _load_mnist(root: str, image_size: int) -> RawDataset:
    paths = [find_mnist_file(root, name) for name in MNIST_FILES]
    train_x, train_y, test_x, test_y = (_read_idx(p) for p in paths)
    for images, labels, path in ((train_x, train_y, paths[0]), (test_x, test_y, paths[2])):
        if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            reason = f"{images.shape[0]} images but {labels.shape[0]} labels"
            raise DatasetCorruptError(str(path), reason)
    x = torch.cat([train_x, test_x]).unsqueeze(1)
    y = torch.cat([train_y, test_y]).long()
    if y.numel() and int(y.max()) > 9:
        raise DatasetCorruptError(str(paths[1]), f"label {int(y.max())} outside 0..9")
    params = {"root": str(root), "image_size": image_size}
    return RawDataset(resize_uint8(x, image_size), y, 10, "mnist", params)


def find_mnist_file(root: str | Path, name: str) -> Path:
    """Locate one MNIST IDX file (plain or .gz) in `root` or `root/MNIST/raw`."""
    hint = (
        "MNIST is read offline (nothing is downloaded): put "
        + ", ".join(MNIST_FILES)
        + " (plain or .gz) into the directory given as root, or into <root>/MNIST/raw"
    )
    if not str(root):
        raise DatasetNotFoundError(f"<root unset>/{name}", "set root to a directory. " + hint)
    base = Path(root)
    for folder in (base, base / "MNIST" / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetNotFoundError(str(base / name), hint)


def _read_idx(path: Path) -> torch.Tensor:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    reader = read_image_file if "images" in path.name else read_label_file
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        # torchvision's readers take a path to an uncompressed file.
        with tempfile.TemporaryDirectory(prefix="tinyexp-idx-") as tmp:
            plain = Path(tmp) / path.stem
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return reader(str(plain))
    except (AssertionError, ValueError, TypeError, RuntimeError, KeyError, OSError) as exc:
        # torchvision signals a malformed file with bare asserts and view errors.
        reason = f"not a valid IDX file ({type(exc).__name__}: {exc})"
        raise DatasetCorruptError(str(path), reason) from exc


def _load_image_folder(root: str, image_size: int) -> RawDataset:
    from tinyexp_core.data.image_folder import load_image_folder

    return load_image_folder(root, image_size)


_REAL_SOURCES: dict[str, Callable[[str, int], RawDataset]] = {
    "digits": _load_digits,
    "mnist": _load_mnist,
    "image_folder": _load_image_folder,
}


def _load_synthetic(seed: int, num_samples: int, image_size: int, num_classes: int) -> RawDataset:
    _check_int_at_least("num_classes", num_classes, 2)
    n = num_samples or DEFAULT_SYNTHETIC_SAMPLES
    generator = torch.Generator().manual_seed(seed)
    # Prototypes are upsampled 7x7 noise: smooth blobs that a small CNN separates quickly,
    # which pixel-level white noise would not be.
    coarse = torch.rand((num_classes, 1, 7, 7), generator=generator)
    prototypes = F.interpolate(
        coarse, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    # Balanced classes, in random order.
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    x = torch.empty((n, 1, image_size, image_size), dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        labels = y[start : start + _CHUNK]
        noise = torch.randn((labels.shape[0], 1, image_size, image_size), generator=generator)
        images = prototypes[labels].mul(0.7).add_(0.15).add_(noise.mul_(0.2))
        x[start : start + _CHUNK] = images.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    params = {"seed": seed, "num_samples": n, "image_size": image_size, "num_classes": num_classes}
    return RawDataset(x, y.long(), num_classes, "synthetic", params)


def write_idx_images(path: str | Path, x: torch.Tensor) -> None:
    """Write N x H x W (or N x 1 x H x W) uint8 images as an IDX file (gzipped if .gz)."""
    if x.dim() == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dtype != torch.uint8 or x.dim() != 3:
        raise ConfigValueError("x", f"{x.dtype} {tuple(x.shape)}", "a uint8 tensor N x H x W")
    header = struct.pack(">4I", IDX_IMAGES_MAGIC, *x.shape)
    _write_bytes(Path(path), header + x.contiguous().numpy().tobytes())


def write_idx_labels(path: str | Path, y: torch.Tensor) -> None:
    """Write N labels in 0..255 as an IDX label file (gzipped if .gz)."""
    if y.dim() != 1 or (y.numel() and (int(y.min()) < 0 or int(y.max()) > 255)):
        raise ConfigValueError("y", f"{y.dtype} {tuple(y.shape)}", "a 1-d tensor of 0..255")
    header = struct.pack(">2I", IDX_LABELS_MAGIC, y.shape[0])
    _write_bytes(Path(path), header + y.to(torch.uint8).contiguous().numpy().tobytes())


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)
