"""Tests of tinyexp_core.data: sources, prepared datasets, loaders, samplers, image folders."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from PIL import Image

from tinyexp_core.config.exceptions import (
    ConfigValueError,
    DatasetCorruptError,
    DatasetNotFoundError,
)
from tinyexp_core.data import (
    MNIST_FILES,
    SOURCES,
    HoldOnesampleDataLoader,
    ImageFolderDataset,
    InfiniteSampler,
    RawDataset,
    RedisSampleCache,
    TensorBatchLoader,
    load_image_folder,
    load_source,
    load_split,
    prepare_dataset,
    prepared_loader,
    read_manifest,
    sha256_file,
    write_idx_images,
    write_idx_labels,
)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test Redis (conftest: CI's server or the embedded one)."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def small_raw() -> RawDataset:
    return load_source("synthetic", num_samples=300, image_size=8, num_classes=3, seed=1)


# --- sources -------------------------------------------------------------------------------


def test_digits_shape_dtype_and_determinism() -> None:
    first = load_source("digits")
    second = load_source("digits")
    assert first.x.shape == (1797, 1, 28, 28)
    assert first.x.dtype == torch.uint8 and first.y.dtype == torch.int64
    assert first.num_classes == 10 and first.source == "digits"
    assert sorted(first.y.unique().tolist()) == list(range(10))
    assert int(first.x.max()) == 255 and int(first.x.min()) == 0
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)
    json.dumps(first.params)


def test_digits_subset_is_seeded() -> None:
    subset = load_source("digits", num_samples=100, seed=3)
    assert subset.x.shape == (100, 1, 28, 28)
    assert torch.equal(subset.y, load_source("digits", num_samples=100, seed=3).y)
    with pytest.raises(ConfigValueError, match="num_samples"):
        load_source("digits", num_samples=5000)


def _mnist_arrays() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    train_x = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8, generator=generator)
    test_x = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8, generator=generator)
    train_y = torch.randint(0, 10, (12,), generator=generator)
    test_y = torch.randint(0, 10, (5,), generator=generator)
    return train_x, train_y, test_x, test_y


def _write_mnist(folder: Path, suffix: str = "") -> None:
    for name, data in zip(MNIST_FILES, _mnist_arrays(), strict=True):
        writer = write_idx_images if "images" in name else write_idx_labels
        writer(folder / f"{name}{suffix}", data)


@pytest.mark.parametrize(("subdir", "suffix"), [("", ""), ("MNIST/raw", ".gz")])
def test_mnist_idx_round_trip(tmp_path: Path, subdir: str, suffix: str) -> None:
    _write_mnist(tmp_path / subdir, suffix)
    raw = load_source("mnist", root=str(tmp_path))
    train_x, train_y, test_x, test_y = _mnist_arrays()
    assert raw.x.shape == (17, 1, 28, 28) and raw.x.dtype == torch.uint8
    assert torch.equal(raw.x[:, 0], torch.cat([train_x, test_x]))
    assert torch.equal(raw.y, torch.cat([train_y, test_y]))
    assert raw.num_classes == 10 and raw.params["root"] == str(tmp_path)


def test_mnist_missing_file_names_the_path(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_source("mnist", root=str(tmp_path))
    assert info.value.path == str(tmp_path / "t10k-labels-idx1-ubyte")
    assert "MNIST/raw" in str(info.value) and "downloaded" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="set root"):
        load_source("mnist")


def test_mnist_corrupt_file_is_named(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:100])
    with pytest.raises(DatasetCorruptError) as info:
        load_source("mnist", root=str(tmp_path))
    assert info.value.path == str(images)


def test_synthetic_sizes() -> None:
    raw = load_source("synthetic", num_samples=50, image_size=12, num_classes=4, seed=2)
    assert raw.x.shape == (50, 1, 12, 12) and raw.x.dtype == torch.uint8
    assert raw.num_classes == 4 and raw.y.bincount().tolist() == [13, 13, 12, 12]
    assert load_source("synthetic").x.shape == (2048, 1, 28, 28)
    again = load_source("synthetic", num_samples=50, image_size=12, num_classes=4, seed=2)
    assert torch.equal(raw.x, again.x)
    other = load_source("synthetic", num_samples=50, image_size=12, num_classes=4, seed=3)
    assert not torch.equal(raw.x, other.x)


def test_unknown_source_lists_allowed() -> None:
    with pytest.raises(ConfigValueError) as info:
        load_source("cifar")
    assert info.value.key == "source" and info.value.value == "cifar"
    for allowed in SOURCES:
        assert repr(allowed) in str(info.value)


# --- prepared datasets ---------------------------------------------------------------------


def test_prepare_counts_histograms_and_hashes(tmp_path: Path, small_raw: RawDataset) -> None:
    manifest = prepare_dataset(small_raw, tmp_path, val_fraction=0.1, test_fraction=0.2)
    folder = Path(manifest.path)
    assert folder == tmp_path / "synthetic" / manifest.data_version
    assert len(manifest.data_version) == 12
    assert sum(manifest.counts.values()) == len(small_raw)
    assert manifest.counts == {"train": 210, "val": 30, "test": 60}
    # Stratified: every class contributes its share to every split.
    assert manifest.class_histogram == {"train": [70] * 3, "val": [10] * 3, "test": [20] * 3}
    assert manifest.shape == [1, 8, 8] and manifest.format == "tinyexp.prepared/1"
    for name, info in manifest.files.items():
        assert sha256_file(folder / name) == info["sha256"]
        assert (folder / name).stat().st_size == info["size"]
    assert read_manifest(folder) == manifest
    assert [p.name for p in tmp_path.joinpath("synthetic").iterdir()] == [manifest.data_version]
    parts = [load_split(folder, split) for split in ("train", "val", "test")]
    assert sum(x.shape[0] for x, _ in parts) == len(small_raw)
    assert all(x.dtype == torch.uint8 and y.dtype == torch.int64 for x, y in parts)


def test_prepare_is_idempotent(tmp_path: Path, small_raw: RawDataset) -> None:
    first = prepare_dataset(small_raw, tmp_path)
    folder = Path(first.path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    second = prepare_dataset(small_raw, tmp_path, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def test_prepare_version_depends_on_data_and_split(tmp_path: Path, small_raw: RawDataset) -> None:
    base = prepare_dataset(small_raw, tmp_path).data_version
    assert prepare_dataset(small_raw, tmp_path, seed=1).data_version != base
    assert prepare_dataset(small_raw, tmp_path, val_fraction=0.2).data_version != base
    as_int = prepare_dataset(small_raw, tmp_path, val_fraction=0).data_version
    assert prepare_dataset(small_raw, tmp_path, val_fraction=0.0).data_version == as_int
    other = load_source("synthetic", num_samples=300, image_size=8, num_classes=3, seed=2)
    assert prepare_dataset(other, tmp_path).data_version != base


def test_tampered_file_is_named(tmp_path: Path, small_raw: RawDataset) -> None:
    manifest = prepare_dataset(small_raw, tmp_path)
    victim = Path(manifest.path) / "val.pt"
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(DatasetCorruptError) as info:
        load_split(manifest.path, "val")
    assert info.value.path == str(victim) and "sha256" in str(info.value)
    load_split(manifest.path, "train")


def test_prepare_replaces_a_damaged_directory(tmp_path: Path, small_raw: RawDataset) -> None:
    manifest = prepare_dataset(small_raw, tmp_path)
    (Path(manifest.path) / "test.pt").unlink()
    again = prepare_dataset(small_raw, tmp_path)
    assert again.data_version == manifest.data_version
    load_split(again.path, "test")
    assert len(list((tmp_path / "synthetic").iterdir())) == 1


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction+test_fraction"),
    ],
)
def test_prepare_rejects_bad_fractions(
    tmp_path: Path, small_raw: RawDataset, kwargs: dict[str, float], key: str
) -> None:
    with pytest.raises(ConfigValueError) as info:
        prepare_dataset(small_raw, tmp_path, **kwargs)
    assert info.value.key == key
    assert not tmp_path.joinpath("synthetic").exists()


def test_read_errors(tmp_path: Path, small_raw: RawDataset) -> None:
    with pytest.raises(DatasetNotFoundError, match="manifest.json"):
        read_manifest(tmp_path)
    manifest = prepare_dataset(small_raw, tmp_path)
    with pytest.raises(ConfigValueError) as info:
        load_split(manifest.path, "holdout")
    assert "'train', 'val', 'test'" in str(info.value)
    (Path(manifest.path) / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetCorruptError, match="manifest.json"):
        read_manifest(manifest.path)


# --- TensorBatchLoader ---------------------------------------------------------------------


def _indexed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Labels equal to the sample index make every sample traceable through the loader.
    return torch.zeros((n, 1, 2, 2), dtype=torch.uint8), torch.arange(n)


def _seen(loader: TensorBatchLoader) -> list[int]:
    return [int(v) for _, y in loader for v in y]


def test_loader_two_ranks_cover_dataset_with_equal_len() -> None:
    x, y = _indexed(101)
    loaders = [TensorBatchLoader(x, y, 8, rank=r, world_size=2, seed=5) for r in range(2)]
    assert len(loaders[0]) == len(loaders[1]) == 7
    assert loaders[0].num_samples == loaders[1].num_samples == 51
    assert loaders[0].dataset_size == 101
    seen = [_seen(loader) for loader in loaders]
    assert [len(s) for s in seen] == [51, 51]
    assert set(seen[0]) | set(seen[1]) == set(range(101))
    # 102 slots for 101 samples: exactly one sample is repeated as padding.
    assert len(set(seen[0]) & set(seen[1])) + len(seen[0]) - len(set(seen[0])) == 1


def test_loader_drop_last_keeps_ranks_equal() -> None:
    x, y = _indexed(101)
    loaders = [
        TensorBatchLoader(x, y, 8, rank=r, world_size=3, drop_last=True, shuffle=False)
        for r in range(3)
    ]
    assert {len(loader) for loader in loaders} == {4}
    seen = [_seen(loader) for loader in loaders]
    assert all(len(s) == 32 for s in seen)
    assert len(set().union(*map(set, seen))) == 96


def test_loader_set_epoch_changes_order_deterministically() -> None:
    x, y = _indexed(40)
    loader = TensorBatchLoader(x, y, 16, seed=3)
    epoch0 = _seen(loader)
    assert _seen(loader) == epoch0
    loader.set_epoch(1)
    epoch1 = _seen(loader)
    assert epoch1 != epoch0 and sorted(epoch1) == list(range(40))
    twin = TensorBatchLoader(x, y, 16, seed=3)
    twin.set_epoch(1)
    assert _seen(twin) == epoch1
    assert _seen(TensorBatchLoader(x, y, 16, shuffle=False)) == list(range(40))


def test_loader_normalizes() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(3, 1, 1, 1)
    loader = TensorBatchLoader(x, torch.arange(3), 3, shuffle=False, mean=0.5, std=0.25)
    batch_x, batch_y = next(iter(loader))
    expected = (x.float() / 255 - 0.5) / 0.25
    assert batch_x.dtype == torch.float32 and torch.allclose(batch_x, expected)
    assert torch.equal(batch_y, torch.arange(3))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"batch_size": 0}, "batch_size"), ({"rank": 2, "world_size": 2}, "rank")],
)
def test_loader_rejects_bad_arguments(kwargs: dict[str, int], key: str) -> None:
    x, y = _indexed(4)
    args = {"batch_size": 2, **kwargs}
    with pytest.raises(ConfigValueError) as info:
        TensorBatchLoader(x, y, args.pop("batch_size"), **args)
    assert info.value.key == key


def test_prepared_loader_defaults(tmp_path: Path, small_raw: RawDataset) -> None:
    manifest = prepare_dataset(small_raw, tmp_path)
    train = prepared_loader(manifest.path, "train", 32)
    test = prepared_loader(manifest.path, "test", 32, rank=1, world_size=2)
    assert train.shuffle and not test.shuffle and not train.drop_last
    assert train.dataset_size == manifest.counts["train"]
    assert test.num_samples == manifest.counts["test"] // 2
    batch_x, _ = next(iter(train))
    assert batch_x.shape == (32, 1, 8, 8)


# --- TinyExp samplers ----------------------------------------------------------------------


def _take(sampler: InfiniteSampler, n: int) -> list[int]:
    stream = iter(sampler)
    return [next(stream) for _ in range(n)]


def test_infinite_sampler_shards_one_stream() -> None:
    stream = _take(InfiniteSampler(10, seed=7), 40)
    rank0 = _take(InfiniteSampler(10, seed=7, rank=0, world_size=2), 20)
    rank1 = _take(InfiniteSampler(10, seed=7, rank=1, world_size=2), 20)
    assert rank0 == stream[0::2] and rank1 == stream[1::2]
    # One pass of the stream: the ranks split the dataset without overlap.
    assert sorted(rank0[:5] + rank1[:5]) == list(range(10))
    assert stream[10:20] != stream[:10] and sorted(stream[10:20]) == list(range(10))
    assert _take(InfiniteSampler(3, shuffle=False), 7) == [0, 1, 2, 0, 1, 2, 0]
    assert len(InfiniteSampler(5, world_size=2)) == 3
    assert len(InfiniteSampler(5, world_size=2, drop_last=True)) == 2


def test_hold_one_sample_loader_repeats_first_batch() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(20.0).reshape(10, 2), torch.arange(10))
    inner = torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True)
    held = HoldOnesampleDataLoader(inner, num_steps=3)
    batches = list(held)
    assert len(batches) == len(held) == 3
    for x, y in batches[1:]:
        assert torch.equal(x, batches[0][0]) and torch.equal(y, batches[0][1])
    assert batches[1][0] is not batches[0][0]
    endless = iter(HoldOnesampleDataLoader(inner))
    assert all(next(endless)[0].shape == (4, 2) for _ in range(5))
    assert len(HoldOnesampleDataLoader(inner)) == len(inner)


# --- image folders and the Redis sample cache ----------------------------------------------


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    colors = {"cat": (200, 10, 10), "dog": (10, 200, 10)}
    for name, color in colors.items():
        (root / name).mkdir(parents=True)
        for i in range(3):
            image = Image.new("RGB", (10 + i, 12), color)
            image.putpixel((0, 0), (i * 50, 0, 255))
            image.save(root / name / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_dataset(image_root: Path) -> None:
    dataset = ImageFolderDataset(image_root, image_size=16)
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 6
    image, label = dataset[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label == 1
    assert tuple(image[:, 8, 8].tolist()) == (10, 200, 10)
    raw = load_source("image_folder", root=str(image_root), image_size=16)
    assert raw.x.shape == (6, 3, 16, 16) and raw.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert raw.source == "image_folder" and raw.num_classes == 2
    manifest = prepare_dataset(raw, image_root.parent / "prepared", test_fraction=0.34)
    assert manifest.class_histogram["test"] == [1, 1]


def test_image_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        ImageFolderDataset(tmp_path / "nowhere", image_size=8)
    assert info.value.path == str(tmp_path / "nowhere")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="cls"):
        ImageFolderDataset(tmp_path / "empty", image_size=8)


def test_image_folder_redis_cache(redis_client: redis.Redis, image_root: Path) -> None:
    cache = RedisSampleCache(redis_client, f"test-data-{uuid.uuid4().hex}", ttl_s=300)
    try:
        dataset = ImageFolderDataset(image_root, image_size=16, cache=cache)
        first = [dataset[i] for i in range(len(dataset))]
        assert (cache.hits, cache.misses, cache.errors) == (0, 6, 0)
        second = [dataset[i] for i in range(len(dataset))]
        assert (cache.hits, cache.misses, cache.errors) == (6, 6, 0)
        for (a, label_a), (b, label_b) in zip(first, second, strict=True):
            assert torch.equal(a, b) and label_a == label_b
        assert 0 < redis_client.ttl(cache.key(0)) <= 300
        raw = load_image_folder(image_root, 16, cache=cache)
        assert cache.hits == 12 and torch.equal(raw.x[0], first[0][0])
    finally:
        assert cache.clear() == 6
    assert redis_client.exists(cache.key(0)) == 0


class _BrokenRedis:
    def get(self, key: str) -> bytes:
        raise redis.ConnectionError("down")

    def set(self, key: str, value: bytes, ex: int | None = None) -> None:
        raise redis.ConnectionError("down")

    def mget(self, keys: list[str]) -> list[bytes]:
        raise redis.ConnectionError("down")

    def pipeline(self, transaction: bool = True) -> _BrokenRedis:
        return self

    def execute(self) -> list:
        raise redis.ConnectionError("down")


def test_redis_cache_is_best_effort(image_root: Path) -> None:
    cache = RedisSampleCache(_BrokenRedis(), "broken")
    dataset = ImageFolderDataset(image_root, image_size=8, cache=cache)
    image, _ = dataset[0]
    assert image.shape == (3, 8, 8)
    assert (cache.hits, cache.misses, cache.errors) == (0, 1, 2)
    raw = load_image_folder(image_root, 8, cache=cache)  # batched: one MGET, one pipeline
    assert torch.equal(raw.x[0], image) and len(raw.y) == 6
    assert (cache.hits, cache.misses, cache.errors) == (0, 7, 4)
