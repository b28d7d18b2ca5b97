"""`model_checkpoint`: the run's best checkpoint, verified and promoted to models/."""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from ..resources import StorageResource
from .common import GROUP


class CheckpointConfig(dg.Config):
    """Name under which the model is promoted (`models/<name>/<version>/model.pt`)."""

    model_name: str = Field(
        default="", description="name of the promoted model; empty: the experiment's exp_name"
    )


def promote(source: str, target_dir: Path) -> tuple[Path, str]:
    """Copy a verified checkpoint into a new version folder, atomically; never overwrite."""
    from tinyexp_core.checkpoint import copy_checkpoint, verify_checkpoint
    from tinyexp_core.exceptions import CheckpointCorruptError

    sha = verify_checkpoint(source)
    target = target_dir / "model.pt"
    if target.exists() and verify_checkpoint(target) == sha:
        return target, sha  # the same bytes were promoted already (a retried step)
    if target.exists():
        raise dg.Failure(f"refusing to overwrite promoted checkpoint {target}", allow_retries=False)
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        copy_checkpoint(source, target, sha)
    except CheckpointCorruptError as err:
        raise dg.Failure(f"promoted copy {target} does not match {source}: {err}") from None
    return target, sha


@dg.asset(group_name=GROUP, code_version="1", kinds={"pytorch"})
def model_checkpoint(
    context: dg.AssetExecutionContext,
    config: CheckpointConfig,
    trained_model: dict[str, Any],
    storage: StorageResource,
) -> dg.Output[dict[str, Any]]:
    """The best checkpoint, sha256-verified, copied to models/<name>/<version>/model.pt."""
    name = config.model_name or trained_model["exp_name"]
    version = trained_model["run_id"]
    target, sha = promote(trained_model["best_checkpoint"], storage.models_dir() / name / version)
    context.log.info(f"promoted {trained_model['best_checkpoint']} to {target}")
    value = {
        **{k: trained_model[k] for k in ("experiment", "overrides", "dataset_path", "config_hash")},
        "path": str(target),
        "sha256": sha,
        "name": name,
        "version": version,
        "source_run": trained_model["run_id"],
    }
    metadata = {
        "model_path": dg.MetadataValue.path(str(target)),
        "sha256": sha,
        "size_bytes": target.stat().st_size,
        "source_run": trained_model["run_id"],
        "source_checkpoint": dg.MetadataValue.path(trained_model["best_checkpoint"]),
        "val_accuracy": trained_model["best_val_accuracy"],
        "config_hash": trained_model["config_hash"],
    }
    return dg.Output(value, metadata=metadata, data_version=dg.DataVersion(sha[:16]))
