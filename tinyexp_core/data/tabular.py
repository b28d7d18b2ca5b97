"""A prepared tabular dataset: standardized float features, targets, a sha256 manifest.

Layout: `<out_root>/<source>/<data_version>/{train,val,test}.pt` and `manifest.json`, as for
images (`prepared.py`), but the samples are rows: `x` float32 N x F, standardized with the
train split's statistics (so nothing leaks from val/test). Regression (`num_classes=0`):
`y` float32 N in the target's own units, the manifest records the target's train mean and
std, so a model trained on standardized targets can report errors in the target's units.
Classification (`num_classes=K`): `y` int64 labels in [0, K), each split drawn from every
class alike (stratified), and the manifest holds the per-split class histogram. The version
is a content hash of the raw table and the split parameters: the same input always lands
in the same directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from tinyexp_core.config.exceptions import (
    ConfigValueError,
    DatasetCorruptError,
    DatasetNotFoundError,
)
from tinyexp_core.contract import PreparedData
from tinyexp_core.files import sha256_file
from tinyexp_core.storage import localize_dataset

FORMAT = "tinyexp.tabular/1"
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.json"

__all__ = ["FORMAT", "load_tabular_split", "prepare_tabular", "read_tabular_manifest"]


def _check_inputs(
    x: torch.Tensor, y: torch.Tensor, val_fraction: float, test_fraction: float, num_classes: int
):
    if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ConfigValueError("x/y", f"{tuple(x.shape)}/{tuple(y.shape)}", "N x F and N")
    if num_classes < 0:
        raise ConfigValueError("num_classes", num_classes, "0 (regression) or >= 2 classes")
    if num_classes:
        labels = y.long()
        bad = not torch.equal(labels.to(y.dtype), y) or labels.min() < 0
        if num_classes < 2 or bad or labels.max() >= num_classes:
            found = sorted({int(v) for v in y.unique()[:10]})
            allowed = f"integer labels in [0, {num_classes}) with num_classes >= 2"
            raise ConfigValueError("y", f"labels {found}", allowed)
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ConfigValueError(key, value, "a fraction with 0 < value < 1")
    if val_fraction + test_fraction >= 0.9:
        total = val_fraction + test_fraction
        raise ConfigValueError("val_fraction+test_fraction", total, "< 0.9 (train needs rows)")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ConfigValueError("x/y", "non-finite values", "finite numbers only")


def _version(x: torch.Tensor, y: torch.Tensor, source: str, split: dict) -> str:
    digest = hashlib.sha256()
    header = {"format": FORMAT, "source": source, "shape": list(x.shape), "split": split}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(x.double().contiguous().numpy().tobytes())
    digest.update(y.double().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def prepare_tabular(
    x: torch.Tensor,
    y: torch.Tensor,
    out_root: str | Path,
    *,
    source: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    feature_names: Sequence[str] = (),
    num_classes: int = 0,
) -> PreparedData:
    """Split rows at random (seeded; stratified by class when `num_classes` > 0),
    standardize features, write the version (idempotent)."""
    _check_inputs(x, y, val_fraction, test_fraction, num_classes)
    split = {"val_fraction": float(val_fraction), "test_fraction": float(test_fraction)}
    split["seed"] = int(seed)
    if num_classes:
        split["num_classes"] = int(num_classes)  # another task is another version
    version = _version(x, y, source, split)
    target = Path(out_root) / source / version
    if (target / MANIFEST_NAME).is_file():
        return read_tabular_manifest(target)  # published before: same input, same files

    rows = _split_rows(y, num_classes, val_fraction, test_fraction, seed)
    train_x = x[rows["train"]].double()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-12)
    params = {
        **split,
        "feature_names": list(feature_names),
        "feature_mean": mean.tolist(),
        "feature_std": std.tolist(),
    }
    if not num_classes:
        train_y = y[rows["train"]].double()
        params.update(target_mean=float(train_y.mean()), target_std=float(train_y.std()))
    targets = y.long() if num_classes else y.float()
    splits = {
        name: (((x[idx].double() - mean) / std).float(), targets[idx]) for name, idx in rows.items()
    }
    data = PreparedData(
        path=str(target),
        data_version=version,
        source=source,
        counts={name: int(idx.numel()) for name, idx in rows.items()},
        files={},
        shape=[int(x.shape[1])],
        params=params,
        num_classes=int(num_classes),
        class_histogram=_histogram(targets, rows, num_classes),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    _publish(target, data, splits)
    return read_tabular_manifest(target)


def _publish(
    target: Path, data: PreparedData, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """Write the split files and the manifest aside, then rename the folder into place: a
    reader sees the whole version or none of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data.data_version}.tmp-", dir=target.parent))
    try:
        for name, (features, labels) in splits.items():
            file = tmp / f"{name}.pt"
            torch.save({"x": features, "y": labels}, file)
            data.files[file.name] = {"sha256": sha256_file(file), "size": file.stat().st_size}
        manifest = {"format": FORMAT, **data.to_dict()}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / MANIFEST_NAME).is_file():
                raise  # not a concurrent publisher of the same version: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _split_rows(
    y: torch.Tensor, num_classes: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, torch.Tensor]:
    """Sorted row indices per split: seeded at random, or per class for classification."""
    if num_classes:
        from tinyexp_core.data.prepared import stratified_split

        return stratified_split(y.long(), num_classes, val_fraction, test_fraction, seed)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    num_test, num_val = round(len(y) * test_fraction), round(len(y) * val_fraction)
    return {
        "test": order[:num_test].sort().values,
        "val": order[num_test : num_test + num_val].sort().values,
        "train": order[num_test + num_val :].sort().values,
    }


def _histogram(
    labels: torch.Tensor, rows: dict[str, torch.Tensor], num_classes: int
) -> dict[str, list[int]]:
    """Samples per class in each split (classification), else empty."""
    if not num_classes:
        return {}
    return {
        name: torch.bincount(labels[idx], minlength=num_classes).tolist()
        for name, idx in rows.items()
    }


def read_tabular_manifest(path: str | Path) -> PreparedData:
    """The manifest of a prepared tabular dataset (its directory or the file itself)."""
    path = localize_dataset(path, MANIFEST_NAME)
    file = path if path.name == MANIFEST_NAME else path / MANIFEST_NAME
    if not file.is_file():
        raise DatasetNotFoundError(str(file), "Prepare it with the experiment's prepare_data().")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        data = PreparedData.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise DatasetCorruptError(str(file), f"unreadable manifest ({exc})") from exc
    if raw.get("format") != FORMAT:
        raise DatasetCorruptError(str(file), f"format {raw.get('format')!r}, expected {FORMAT!r}")
    if sorted(data.files) != sorted(f"{s}.pt" for s in SPLITS):
        raise DatasetCorruptError(str(file), f"lists files {sorted(data.files)}")
    data.path = str(file.parent)  # moved since written: trust where it was found
    return data


def load_tabular_split(path: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as (x float32 N x F, y: float32 N targets or int64 N labels), its sha256
    checked against the manifest."""
    if split not in SPLITS:
        raise ConfigValueError("split", split, SPLITS)
    data = read_tabular_manifest(path)
    file = Path(data.path) / f"{split}.pt"
    if not file.is_file():
        raise DatasetNotFoundError(str(file), "The prepared dataset is incomplete; prepare again.")
    actual, expected = sha256_file(file), data.files[file.name]["sha256"]
    if actual != expected:
        raise DatasetCorruptError(str(file), f"sha256 {actual} does not match the manifest's")
    tensors = torch.load(file, map_location="cpu", weights_only=True)
    x, y = tensors["x"], tensors["y"]
    if tuple(x.shape) != (data.counts[split], *data.shape) or tuple(y.shape) != (len(x),):
        reason = f"x {tuple(x.shape)} / y {tuple(y.shape)}, manifest says {data.counts[split]} rows"
        raise DatasetCorruptError(str(file), reason)
    return x, y
