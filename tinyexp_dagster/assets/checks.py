"""Asset checks that re-read what is on disk: dataset sanity and checkpoint integrity."""

from typing import Any

import dagster as dg

from .checkpoint import model_checkpoint
from .dataset import prepared_dataset


def dataset_sanity(value: dict[str, Any]) -> dg.AssetCheckResult:
    """Every split non-empty, every class present in train, no NaN, files match sha256."""
    import torch

    from tinyexp_core.data import load_split, read_manifest
    from tinyexp_core.exceptions import DatasetError

    problems: list[str] = []
    try:
        manifest = read_manifest(value["path"])
        for split in ("train", "val", "test"):
            x, y = load_split(value["path"], split)  # verifies sha256
            if len(y) == 0:
                problems.append(f"split {split} is empty")
            if x.is_floating_point() and bool(torch.isnan(x).any()):
                problems.append(f"split {split} has NaN values")
        empty = [c for c, n in enumerate(manifest.class_histogram["train"]) if n == 0]
        if empty:
            problems.append(f"classes with no training sample: {empty}")
    except DatasetError as err:
        problems.append(str(err))
        manifest = None
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "splits non-empty, all classes present, sha256 ok",
        metadata={"counts": dg.MetadataValue.json(manifest.counts if manifest else {})},
    )


def checkpoint_integrity(value: dict[str, Any]) -> dg.AssetCheckResult:
    """The promoted file exists, matches its recorded sha256 and loads (weights only)."""
    from tinyexp_core.checkpoint import load_checkpoint, verify_checkpoint
    from tinyexp_core.exceptions import CheckpointError

    try:
        sha = verify_checkpoint(value["path"])  # against its sidecar: hashed once, here
        state = load_checkpoint(value["path"], verify=False)
        sha_ok = value.get("sha256") is None or sha == value["sha256"]
        problem = "" if sha_ok else "sha256 differs from the one recorded at promotion"
        epoch = int(state["epoch"])
    except CheckpointError as err:
        problem, epoch = str(err), -1
    return dg.AssetCheckResult(
        passed=not problem,
        severity=dg.AssetCheckSeverity.ERROR,
        description=problem or "file loads with weights_only=True and matches its sha256",
        metadata={"path": dg.MetadataValue.path(value["path"]), "epoch": epoch},
    )


@dg.asset_check(asset=prepared_dataset, blocking=True, name="dataset_sanity")
def prepared_dataset_sanity(prepared_dataset: dict[str, Any]) -> dg.AssetCheckResult:
    """Dataset sanity: no empty split or class, no NaN, files match the manifest."""
    return dataset_sanity(prepared_dataset)


@dg.asset_check(asset=model_checkpoint, blocking=True, name="checkpoint_integrity")
def model_checkpoint_integrity(model_checkpoint: dict[str, Any]) -> dg.AssetCheckResult:
    """Checkpoint integrity: the promoted file loads and its sha256 matches."""
    return checkpoint_integrity(model_checkpoint)
