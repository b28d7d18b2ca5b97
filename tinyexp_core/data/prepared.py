"""The prepared-dataset format: a versioned directory of split tensors plus a manifest.

Layout: `<out_root>/<source>/<data_version>/{train,val,test}.pt` and `manifest.json`.
The version is a content hash, so the same input always lands in the same directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from tinyexp_core.config.exceptions import (
    ConfigValueError,
    DatasetCorruptError,
    DatasetNotFoundError,
)
from tinyexp_core.data.raw import RawDataset
from tinyexp_core.files import atomic_write, atomic_write_text, sha256_file
from tinyexp_core.storage import localize_dataset

FORMAT = "tinyexp.prepared/1"
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"


@dataclass
class Manifest:
    """What a prepared-dataset directory holds: counts, histograms, file hashes, params."""

    source: str
    data_version: str
    path: str
    num_classes: int
    shape: list[int]  # C, H, W
    counts: dict[str, int]
    class_histogram: dict[str, list[int]]
    files: dict[str, dict[str, Any]]  # filename -> {"sha256": hex, "size": bytes}
    params: dict[str, Any]
    created_at: str  # ISO 8601, UTC
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Build a manifest from `to_dict()` output; KeyError/TypeError if keys are wrong."""
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(data))
        if missing:
            raise KeyError(f"missing keys {missing}")
        return cls(**{name: data[name] for name in names})


def prepare_dataset(
    raw: RawDataset,
    out_root: str | Path,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Manifest:
    """Split `raw` (stratified, seeded) and write it as a versioned prepared dataset.

    Idempotent: an existing directory with a valid manifest is reused as it is.
    """
    _check_fractions(val_fraction, test_fraction)
    _check_raw(raw)
    # float()/int(): 0 and 0.0 are the same split and must give the same version.
    split_params = {
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "seed": int(seed),
    }
    version = data_version(raw, split_params)
    target = Path(out_root) / raw.source / version
    existing = _valid_existing(target, version)
    if existing is not None:
        return existing
    splits = stratified_split(raw.y, raw.num_classes, val_fraction, test_fraction, seed)
    params = {**split_params, "raw": raw.params}
    return _write_atomically(raw, splits, target, version, params)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigValueError(key, value, "a number with 0 <= value < 1")
    if val_fraction + test_fraction >= 1:
        total = val_fraction + test_fraction
        allowed = "val_fraction + test_fraction < 1 (train needs samples)"
        raise ConfigValueError("val_fraction+test_fraction", total, allowed)


def _check_raw(raw: RawDataset) -> None:
    x, y = raw.x, raw.y
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise DatasetCorruptError(
            raw.source, f"x must be uint8 N x C x H x W, got {x.dtype} {tuple(x.shape)}"
        )
    if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
        reason = (
            f"y must be int64 with one label per image ({x.shape[0]}), got {y.dtype} "
            f"{tuple(y.shape)}"
        )
        raise DatasetCorruptError(raw.source, reason)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= raw.num_classes):
        reason = f"labels span {int(y.min())}..{int(y.max())}, allowed 0..{raw.num_classes - 1}"
        raise DatasetCorruptError(raw.source, reason)


def data_version(raw: RawDataset, split_params: dict[str, Any]) -> str:
    """Return the first 12 hex digits of the sha256 of the raw tensors, source and split."""
    digest = hashlib.sha256()
    # Shapes and dtypes go in too: the same bytes viewed as another shape are other data.
    header = {
        "format": FORMAT,
        "source": raw.source,
        "num_classes": raw.num_classes,
        "x": [str(raw.x.dtype), list(raw.x.shape)],
        "y": [str(raw.y.dtype), list(raw.y.shape)],
        "split": split_params,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(raw.x.contiguous().numpy().data)
    digest.update(raw.y.contiguous().numpy().data)
    return digest.hexdigest()[:12]


def stratified_split(
    y: torch.Tensor, num_classes: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, torch.Tensor]:
    """Return sorted sample indices per split, taking each fraction from every class."""
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {split: [] for split in SPLITS}
    for label in range(num_classes):
        members = torch.nonzero(y == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        num_test = math.floor(members.numel() * test_fraction + 0.5)
        num_val = math.floor(members.numel() * val_fraction + 0.5)
        parts["test"].append(members[:num_test])
        parts["val"].append(members[num_test : num_test + num_val])
        parts["train"].append(members[num_test + num_val :])
    # Sorted: the split keeps the source order; loaders shuffle per epoch anyway.
    return {split: torch.cat(chunks).sort().values for split, chunks in parts.items()}


def _write_atomically(
    raw: RawDataset,
    splits: dict[str, torch.Tensor],
    target: Path,
    version: str,
    params: dict[str, Any],
) -> Manifest:
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temp dir sits next to the target so os.replace is a same-filesystem rename.
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=target.parent))
    try:
        manifest = _write_splits(raw, splits, tmp, version, params)
        manifest.path = str(target)
        manifest_text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True)
        atomic_write_text(tmp / MANIFEST_NAME, manifest_text)
        return _publish(tmp, target, version, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_splits(
    raw: RawDataset,
    splits: dict[str, torch.Tensor],
    folder: Path,
    version: str,
    params: dict[str, Any],
) -> Manifest:
    files: dict[str, dict[str, Any]] = {}
    for split, idx in splits.items():
        name, tensors = f"{split}.pt", {"x": raw.x[idx], "y": raw.y[idx]}
        # fsynced like the manifest, so the published directory survives a power cut whole.
        sha, size = atomic_write(folder / name, lambda f, t=tensors: torch.save(t, f))
        files[name] = {"sha256": sha, "size": size}
    return Manifest(
        source=raw.source,
        data_version=version,
        path=str(folder),
        num_classes=raw.num_classes,
        shape=list(raw.x.shape[1:]),
        counts={split: int(idx.numel()) for split, idx in splits.items()},
        class_histogram={
            split: torch.bincount(raw.y[idx], minlength=raw.num_classes).tolist()
            for split, idx in splits.items()
        },
        files=files,
        params=params,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _publish(tmp: Path, target: Path, version: str, manifest: Manifest) -> Manifest:
    if target.exists():
        # Another process may have published the same version while we were writing.
        existing = _valid_existing(target, version)
        if existing is not None:
            return existing
        # Damaged by hand or by a disk fault: move it aside rather than mix files.
        _move_aside(target)
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process published the same version between our check and now.
        existing = _valid_existing(target, version)
        if existing is None:
            raise
        return existing
    return manifest


def _move_aside(target: Path) -> None:
    broken = Path(tempfile.mkdtemp(prefix=f".{target.name}.broken-", dir=target.parent))
    os.replace(target, broken / target.name)
    shutil.rmtree(broken, ignore_errors=True)


def _valid_existing(target: Path, version: str) -> Manifest | None:
    if not (target / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = read_manifest(target)
    except DatasetCorruptError:
        return None
    if manifest.data_version != version:
        return None
    for name, info in manifest.files.items():
        # Sizes are a cheap completeness check; load_split verifies the sha256 on use.
        file = target / name
        if not file.is_file() or file.stat().st_size != info.get("size"):
            return None
    return manifest


def read_manifest(path: str | Path) -> Manifest:
    """Read `manifest.json` of a prepared dataset (the directory or the file itself); an
    object-store URI is fetched into this node's mirror first (files verified)."""
    path = localize_dataset(path, MANIFEST_NAME)
    file = path if path.name == MANIFEST_NAME else path / MANIFEST_NAME
    if not file.is_file():
        hint = "Create it with prepare_dataset (the prepared_dataset asset)."
        raise DatasetNotFoundError(str(file), hint)
    try:
        manifest = Manifest.from_dict(json.loads(file.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetCorruptError(str(file), f"unreadable manifest ({exc})") from exc
    _check_manifest(file, manifest)
    # The directory may have been moved since it was written; trust where we found it.
    manifest.path = str(file.parent)
    return manifest


def _check_manifest(file: Path, manifest: Manifest) -> None:
    if manifest.format != FORMAT:
        raise DatasetCorruptError(str(file), f"format {manifest.format!r}, expected {FORMAT!r}")
    expected = sorted(f"{split}.pt" for split in SPLITS)
    if not isinstance(manifest.files, dict) or sorted(manifest.files) != expected:
        raise DatasetCorruptError(str(file), f"lists files {manifest.files!r}, expected {expected}")
    for name, info in manifest.files.items():
        if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
            raise DatasetCorruptError(str(file), f"entry of {name} has no sha256: {info!r}")
    if sorted(manifest.counts) != sorted(SPLITS) or len(manifest.shape) != 3:
        reason = f"counts {manifest.counts!r} / shape {manifest.shape!r} malformed"
        raise DatasetCorruptError(str(file), reason)


def load_split(
    path: str | Path, split: str, *, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as (x uint8 N x C x H x W, y int64 N), checking its sha256 if verify."""
    if split not in SPLITS:
        raise ConfigValueError("split", split, SPLITS)
    manifest = read_manifest(path)
    file = Path(manifest.path) / f"{split}.pt"
    if not file.is_file():
        raise DatasetNotFoundError(
            str(file), "The prepared dataset is incomplete; prepare it again."
        )
    if verify:
        _verify_file(file, manifest.files[file.name]["sha256"])
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
        x, y = data["x"], data["y"]
    except Exception as exc:  # torch.load raises many unrelated types on a damaged file
        raise DatasetCorruptError(str(file), f"cannot load ({type(exc).__name__}: {exc})") from exc
    _check_loaded(file, manifest, split, x, y)
    return x, y


def _verify_file(file: Path, expected: str) -> None:
    actual = sha256_file(file)
    if actual != expected:
        reason = f"sha256 {actual} does not match the manifest's {expected} (file changed)"
        raise DatasetCorruptError(str(file), reason)


def _check_loaded(file: Path, manifest: Manifest, split: str, x: object, y: object) -> None:
    expected = (manifest.counts[split], *manifest.shape)
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or tuple(x.shape) != expected:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise DatasetCorruptError(str(file), f"x is {got}, manifest says uint8 {expected}")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (expected[0],):
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise DatasetCorruptError(str(file), f"y is {got}, manifest says int64 ({expected[0]},)")
