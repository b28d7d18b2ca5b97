"""Datasets: sources, the prepared-dataset format, loaders and TinyExp samplers."""

from __future__ import annotations

from tinyexp_core.data.image_folder import (
    ImageFolderDataset,
    RedisSampleCache,
    decode_image,
    load_image_folder,
    sample_cache_url,
)
from tinyexp_core.data.loader import TensorBatchLoader, prepared_loader
from tinyexp_core.data.prepared import (
    FORMAT,
    SPLITS,
    Manifest,
    data_version,
    load_split,
    prepare_dataset,
    read_manifest,
    stratified_split,
)
from tinyexp_core.data.raw import RawDataset
from tinyexp_core.data.samplers import HoldOnesampleDataLoader, InfiniteSampler
from tinyexp_core.data.sources import (
    MNIST_FILES,
    SOURCES,
    find_mnist_file,
    load_source,
    resize_uint8,
    write_idx_images,
    write_idx_labels,
)
from tinyexp_core.files import sha256_file

__all__ = [
    "FORMAT",
    "MNIST_FILES",
    "SOURCES",
    "SPLITS",
    "HoldOnesampleDataLoader",
    "ImageFolderDataset",
    "InfiniteSampler",
    "Manifest",
    "RawDataset",
    "RedisSampleCache",
    "sample_cache_url",
    "TensorBatchLoader",
    "data_version",
    "decode_image",
    "find_mnist_file",
    "load_image_folder",
    "load_source",
    "load_split",
    "prepare_dataset",
    "prepared_loader",
    "read_manifest",
    "resize_uint8",
    "sha256_file",
    "stratified_split",
    "write_idx_images",
    "write_idx_labels",
]
