"""Image folders (`root/<class_name>/*.png`) with an optional Redis cache of decoded samples."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from redis.exceptions import RedisError
from torch.utils.data import Dataset

from tinyexp_core.config.exceptions import (
    ConfigValueError,
    DatasetCorruptError,
    DatasetNotFoundError,
)
from tinyexp_core.data.raw import RawDataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
CACHE_KEY_PREFIX = "tinyexp:cache"
_LAYOUT_HINT = "Expected root/<class_name>/*.png|jpg|jpeg|bmp, one folder per class."


def sample_cache_url(configured: str = "") -> str:
    """The sample cache's Redis URL: `configured`, else `$TINYEXP_CACHE_URL`, else the
    progress store's (`$TINYEXP_PROGRESS_URL`, which an orchestrator sets); "" for none."""
    import os

    from tinyexp_core.config.env import ENV_CACHE_URL, ENV_PROGRESS_URL

    return configured or os.environ.get(ENV_CACHE_URL) or os.environ.get(ENV_PROGRESS_URL) or ""


class RedisSampleCache:
    """Best-effort cache of uint8 tensors in Redis, stored as raw bytes behind a shape header.

    Value layout: 1 byte ndim, ndim big-endian uint32 dims, then the tensor bytes (no
    pickle, so reading is one memcpy). A Redis error on `get` is a miss; on `set` it is
    ignored. Both are counted in `errors`. The client must not decode responses.
    """

    def __init__(self, client: Any, namespace: str, ttl_s: int | None = None) -> None:
        if not namespace or ":" in namespace or "*" in namespace:
            raise ConfigValueError("namespace", namespace, "a non-empty name without ':' or '*'")
        if ttl_s is not None and (isinstance(ttl_s, bool) or ttl_s < 1):
            raise ConfigValueError("ttl_s", ttl_s, "None (no expiry) or an integer >= 1")
        self.client = client
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self.errors = 0

    def key(self, index: int) -> str:
        """Return the Redis key of one sample."""
        return f"{CACHE_KEY_PREFIX}:{self.namespace}:{index}"

    def get(self, index: int) -> torch.Tensor | None:
        """Return the cached tensor of `index`, or None on a miss or any Redis problem."""
        try:
            value = self.client.get(self.key(index))
        except (RedisError, OSError):  # best effort: an unreachable cache only costs a decode
            self.errors += 1
            value = None
        tensor = None if value is None else self._decode(value)
        if tensor is None:
            self.misses += 1
        else:
            self.hits += 1
        return tensor

    def get_many(self, indices: list[int]) -> list[torch.Tensor | None]:
        """The cached tensors of `indices` in one round trip (MGET); None for each miss, and
        for all of them on a Redis problem. A per-sample GET pays a round trip per sample,
        which made a warm cache slower than decoding PNGs from a local disk."""
        if not indices:
            return []
        try:
            values = self.client.mget([self.key(i) for i in indices])
        except (RedisError, OSError):  # best effort, see the class docstring
            self.errors += 1
            values = [None] * len(indices)
        tensors = [None if value is None else self._decode(value) for value in values]
        found = sum(t is not None for t in tensors)
        self.hits += found
        self.misses += len(indices) - found
        return tensors

    def set_many(self, items: list[tuple[int, torch.Tensor]]) -> None:
        """Store several uint8 tensors in one round trip (a pipeline); errors are counted."""
        if not items:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for index, tensor in items:
                pipe.set(self.key(index), self._encode(tensor), ex=self.ttl_s)
            pipe.execute()
        except (RedisError, OSError):  # best effort, see the class docstring
            self.errors += 1

    def set(self, index: int, tensor: torch.Tensor) -> None:
        """Store a uint8 tensor under `index`; Redis errors are counted, not raised."""
        value = self._encode(tensor)
        try:
            self.client.set(self.key(index), value, ex=self.ttl_s)
        except (RedisError, OSError):  # best effort, see the class docstring
            self.errors += 1

    @staticmethod
    def _encode(tensor: torch.Tensor) -> bytes:
        if tensor.dtype != torch.uint8:
            raise ConfigValueError("tensor.dtype", str(tensor.dtype), ("torch.uint8",))
        header = struct.pack(f">B{tensor.dim()}I", tensor.dim(), *tensor.shape)
        return header + tensor.contiguous().numpy().tobytes()

    def clear(self) -> int:
        """Delete every key of this namespace (and nothing else); return how many."""
        keys = list(self.client.scan_iter(match=f"{CACHE_KEY_PREFIX}:{self.namespace}:*"))
        return int(self.client.delete(*keys)) if keys else 0

    def _decode(self, value: Any) -> torch.Tensor | None:
        if not isinstance(value, bytes) or not value:
            self.errors += 1
            return None
        ndim = value[0]
        offset = 1 + 4 * ndim
        shape = struct.unpack(f">{ndim}I", value[1:offset]) if len(value) >= offset else ()
        if len(value) < offset or len(value) - offset != int(np.prod(shape)):
            # Written by something else, or truncated: treat it as absent.
            self.errors += 1
            return None
        data = np.frombuffer(value, dtype=np.uint8, offset=offset)
        return torch.from_numpy(data.copy()).reshape(shape)


class ImageFolderDataset(Dataset):
    """`root/<class_name>/<image>` as `(uint8 3 x S x S, label)`; classes sorted by name."""

    def __init__(
        self, root: str | Path, image_size: int, cache: RedisSampleCache | None = None
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigValueError("image_size", image_size, "an integer >= 1")
        self.root = Path(root)
        self.image_size = image_size
        self.cache = cache
        self.classes = _find_classes(self.root)
        self.samples = _find_samples(self.root, self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        expected = (3, self.image_size, self.image_size)
        if self.cache is not None:
            cached = self.cache.get(index)
            # A shape check guards against a namespace reused with another image_size.
            if cached is not None and tuple(cached.shape) == expected:
                return cached, label
        image = decode_image(path, self.image_size)
        if self.cache is not None:
            self.cache.set(index, image)
        return image, label


def _find_classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise DatasetNotFoundError(str(root), _LAYOUT_HINT)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetNotFoundError(str(root / "<class_name>"), "No class folders. " + _LAYOUT_HINT)
    return classes


def _find_samples(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            # An empty class would silently shift what the labels mean.
            hint = "This class folder holds no images. " + _LAYOUT_HINT
            raise DatasetNotFoundError(str(root / name / "*.png"), hint)
        samples.extend((path, label) for path in files)
    return samples


def decode_image(path: Path, image_size: int) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor 3 x S x S (bilinear resize)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetCorruptError(str(path), f"cannot decode image ({exc})") from exc
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


_CACHE_BATCH = 256  # samples per cache round trip when a whole folder is loaded


def load_image_folder(
    root: str | Path, image_size: int, cache: RedisSampleCache | None = None
) -> RawDataset:
    """Decode a whole image folder into one RawDataset (source "image_folder"); with a
    `cache`, samples come from it in batches (one MGET per 256) and the misses are decoded
    and stored back in one pipeline per batch."""
    dataset = ImageFolderDataset(root, image_size, cache=None)
    x = torch.empty((len(dataset), 3, image_size, image_size), dtype=torch.uint8)
    expected = (3, image_size, image_size)
    for start in range(0, len(dataset), _CACHE_BATCH):
        indices = list(range(start, min(start + _CACHE_BATCH, len(dataset))))
        cached = cache.get_many(indices) if cache is not None else [None] * len(indices)
        decoded = []
        for index, tensor in zip(indices, cached, strict=True):
            # A shape check guards against a namespace reused with another image_size.
            if tensor is None or tuple(tensor.shape) != expected:
                tensor = decode_image(dataset.samples[index][0], image_size)
                decoded.append((index, tensor))
            x[index] = tensor
        if cache is not None:
            cache.set_many(decoded)
    y = torch.tensor([label for _, label in dataset.samples], dtype=torch.int64)
    params = {"root": str(root), "image_size": image_size, "classes": dataset.classes}
    return RawDataset(x, y, len(dataset.classes), "image_folder", params)
