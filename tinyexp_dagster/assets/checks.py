"""Asset checks that re-read what is on disk: dataset sanity and checkpoint integrity."""

from typing import Any

import dagster as dg

from tinyexp_dagster.assets.common import PipelineSpec
from tinyexp_dagster.sweep import partitions_def


def dataset_sanity(value: dict[str, Any]) -> dg.AssetCheckResult:
    """Every split non-empty, every class present in train (classification), every file of
    the manifest present with its recorded sha256. The manifest is re-read from disk (any
    experiment's PreparedData format), not taken from the asset value."""
    import json
    from pathlib import Path

    from tinyexp_core.contract import ContractError, PreparedData
    from tinyexp_core.files import sha256_file

    manifest = Path(value["path"]) / "manifest.json"
    try:
        raw = json.loads(manifest.read_text(encoding="utf-8"))
        prepared = PreparedData.from_dict(raw)
    except (OSError, ValueError, ContractError) as err:
        return _failed(f"{manifest} is unreadable: {type(err).__name__}: {err}")
    prepared.path = str(manifest.parent)
    problems: list[str] = []
    for split, count in prepared.counts.items():
        if count == 0:
            problems.append(f"split {split} is empty")
    for name, info in prepared.files.items():
        path = manifest.parent / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif info.get("sha256") and sha256_file(path) != info["sha256"]:
            problems.append(f"{name} does not match its sha256")
    empty = [c for c, n in enumerate(prepared.class_histogram.get("train", [])) if n == 0]
    if prepared.num_classes and empty:
        problems.append(f"classes with no training sample: {empty}")
    if not problems:
        problems += _nan_problems(prepared, str(raw.get("format", "")))
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "splits non-empty, classes present, sha256 ok",
        metadata={"counts": dg.MetadataValue.json(prepared.counts)},
    )


# The prepared-images format holds uint8 images only (prepare_dataset refuses anything
# else), which cannot be NaN: its files are not loaded (nor torch imported) to look.
_INTEGER_FORMATS = ("tinyexp.prepared/1",)


def _nan_problems(prepared: Any, layout: str) -> list[str]:
    """NaN in the float tensors of this project's own table format; other formats are
    checked by their own loaders."""
    if layout in _INTEGER_FORMATS:
        return []
    import torch

    from tinyexp_core.config.exceptions import DatasetError
    from tinyexp_core.data.tabular import FORMAT as TABLE
    from tinyexp_core.data.tabular import load_tabular_split

    loader = {TABLE: load_tabular_split}.get(layout)
    if loader is None:
        return []
    problems = []
    try:
        for split in prepared.counts:
            x, _ = loader(prepared.path, split)
            if x.is_floating_point() and bool(torch.isnan(x).any()):
                problems.append(f"split {split} has NaN values")
    except (DatasetError, OSError, KeyError) as err:
        problems.append(str(err))
    return problems


def _failed(problem: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=False, severity=dg.AssetCheckSeverity.ERROR, description=problem
    )


def checkpoint_integrity(value: dict[str, Any]) -> dg.AssetCheckResult:
    """The promoted file exists, matches its recorded sha256 and loads (weights only)."""
    from tinyexp_core.checkpoint import load_checkpoint, verify_checkpoint
    from tinyexp_core.config.exceptions import CheckpointError

    loaded = value.get("best_loaded") or {}
    how = "file loads with weights_only=True and matches its sha256"
    try:
        sha = verify_checkpoint(value["path"])  # against its sidecar: hashed once, here
        sha_ok = value.get("sha256") is None or sha == value["sha256"]
        problem = "" if sha_ok else "sha256 differs from the one recorded at promotion"
        if loaded.get("sha256") == sha and "epoch" in loaded:
            # rank 0 loaded these very bytes (weights_only=True) as training ended
            epoch, how = int(loaded["epoch"]), how + " (loaded by rank 0 after training)"
        else:
            epoch = int(load_checkpoint(value["path"], verify=False)["epoch"])
    except CheckpointError as err:
        problem, epoch = str(err), -1
    return dg.AssetCheckResult(
        passed=not problem,
        severity=dg.AssetCheckSeverity.ERROR,
        description=problem or how,
        metadata={"path": dg.MetadataValue.path(value["path"]), "epoch": epoch},
    )


def build_dataset_sanity(spec: PipelineSpec) -> dg.AssetChecksDefinition:
    """`dataset_sanity` on `<name>/prepared_dataset` (blocking)."""

    @dg.asset_check(
        asset=spec.key("prepared_dataset"),
        blocking=True,
        name="dataset_sanity",
        description="Dataset sanity: no empty split or class, files match the manifest.",
    )
    def prepared_dataset_sanity(prepared_dataset: dict[str, Any]) -> dg.AssetCheckResult:
        return dataset_sanity(prepared_dataset)

    return prepared_dataset_sanity


def build_checkpoint_integrity(spec: PipelineSpec) -> dg.AssetChecksDefinition:
    """`checkpoint_integrity` on `<name>/model_checkpoint` (blocking)."""

    @dg.asset_check(
        asset=spec.key("model_checkpoint"),
        blocking=True,
        name="checkpoint_integrity",
        partitions_def=partitions_def(spec),  # a sweep: each trial's promoted file
        description="Checkpoint integrity: the promoted file loads and its sha256 matches.",
    )
    def model_checkpoint_integrity(model_checkpoint: dict[str, Any]) -> dg.AssetCheckResult:
        return checkpoint_integrity(model_checkpoint)

    return model_checkpoint_integrity
