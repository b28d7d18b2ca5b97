"""`<name>/model_checkpoint`: the run's best checkpoint, verified and promoted to models/."""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from ..resources import StorageResource
from .common import PipelineSpec
from .sweep import partitions_def


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


def build_model_checkpoint(spec: PipelineSpec) -> dg.AssetsDefinition:
    """The pipeline's promotion asset: the training run's best checkpoint, versioned."""

    @dg.asset(
        key=spec.key("model_checkpoint"),
        group_name=spec.name,
        code_version="1",
        kinds={"pytorch"},
        ins={"trained_model": dg.AssetIn(spec.key("trained_model"))},
        partitions_def=partitions_def(spec),  # a sweep: one version per trial
        description=f"{spec.name}: the best checkpoint, sha256-verified, copied to "
        "models/<name>/<version>/model.pt.",
    )
    def model_checkpoint(
        context: dg.AssetExecutionContext,
        config: CheckpointConfig,
        trained_model: dict[str, Any],
        storage: StorageResource,
    ) -> dg.Output[dict[str, Any]]:
        return promote_run(context, config, trained_model, storage)

    return model_checkpoint


def promote_run(
    context: dg.AssetExecutionContext,
    config: CheckpointConfig,
    trained_model: dict[str, Any],
    storage: StorageResource,
) -> dg.Output[dict[str, Any]]:
    """Promote the TrainResult's best checkpoint; the value names the file and its source."""
    from tinyexp_core.contract import TrainResult

    result = TrainResult.from_dict(trained_model)
    name = config.model_name or trained_model["exp_name"]
    best = result.checkpoints.best
    target, sha = promote(best, storage.models_dir() / name / result.run_id)
    context.log.info(f"promoted {best} to {target}")
    metric = result.primary_metric
    value = {
        **{k: trained_model[k] for k in ("experiment", "overrides", "dataset_path", "config_hash")},
        "path": str(target),
        "sha256": sha,
        "name": name,
        "version": result.run_id,
        "source_run": result.run_id,
        "primary_metric": metric.to_dict(),
        "val_value": trained_model["best_value"],
    }
    metadata = {
        "model_path": dg.MetadataValue.path(str(target)),
        "sha256": sha,
        "size_bytes": target.stat().st_size,
        "source_run": result.run_id,
        "source_checkpoint": dg.MetadataValue.path(best),
        f"val_{metric.name}": trained_model["best_value"],
        "config_hash": trained_model["config_hash"],
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}
    return dg.Output(value, metadata=metadata, data_version=dg.DataVersion(sha[:16]))
