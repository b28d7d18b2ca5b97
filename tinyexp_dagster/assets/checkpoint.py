"""`<name>/model_checkpoint`: the run's best checkpoint, verified and registered as a model
version (`models/<model>/<version>/model.pt` + `version.json`); the `champion` alias moves only
through the `champion_gate` check (assets/champion.py) or `tinyexp-dagster promote`."""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from tinyexp_core.registry import ModelVersion
from tinyexp_dagster.assets.common import PipelineSpec
from tinyexp_dagster.assets.outcome import cancelled_if_terminated
from tinyexp_dagster.resources import RedisProgressResource, StorageResource
from tinyexp_dagster.sweep import partitions_def


class CheckpointConfig(dg.Config):
    """Name under which the model version is registered (`models/<name>/<version>/`)."""

    model_name: str = Field(
        default="",
        description="registry name of the model (its versions and champion); empty: the "
        "pipeline's name",
    )


def promote(source: str, target_dir: Path) -> tuple[Path, str]:
    """Copy a verified checkpoint into a new version folder, atomically; never overwrite."""
    from tinyexp_core.checkpoint import copy_checkpoint, verify_checkpoint
    from tinyexp_core.config.exceptions import CheckpointCorruptError
    from tinyexp_core.storage import localize

    source = str(localize(source))  # a URI (a rank on another node): fetched, verified
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
        description=f"{spec.name}: the best checkpoint, sha256-verified, registered as "
        "version models/<name>/<version>/ (the champion_gate check decides the champion).",
    )
    def model_checkpoint(
        context: dg.AssetExecutionContext,
        config: CheckpointConfig,
        trained_model: dict[str, Any],
        storage: StorageResource,
        redis: RedisProgressResource,
    ) -> dg.Output[dict[str, Any]]:
        with cancelled_if_terminated(context, redis, storage):
            return promote_run(context, config, trained_model, storage, spec.name)

    return model_checkpoint


# What the asset's value (the champion gate's input) carries of the version record.
_VALUE_KEYS = ("config_hash", "experiment", "overrides", "dataset_path")
_VALUE_KEYS += ("path", "sha256", "name", "version", "source_run")
_VALUE_KEYS += ("primary_metric", "val_value", "data_version")


def promote_run(
    context: dg.AssetExecutionContext,
    config: CheckpointConfig,
    trained_model: dict[str, Any],
    storage: StorageResource,
    pipeline: str,
) -> dg.Output[dict[str, Any]]:
    """Register the TrainResult's best checkpoint as a version named by its run id; the value
    names the file, its source and what the champion gate needs to rebuild the experiment."""
    from tinyexp_core.contract import TrainResult
    from tinyexp_core.registry import ModelRegistry
    from tinyexp_dagster.eval_cache import seed

    result = TrainResult.from_dict(trained_model)
    name = config.model_name or pipeline
    registry = ModelRegistry(storage.models_dir(), name)
    best = result.checkpoints.best
    target, sha = promote(best, registry.version_dir(result.run_id))
    metric = result.primary_metric
    created_by = f"dagster run {context.run.run_id} ({pipeline}/model_checkpoint)"
    record = _version_record(trained_model, name, pipeline, target, sha, created_by)
    info = registry.write_version(record)  # the one record of the version
    context.log.info(f"registered {best} as {name} version {result.run_id} ({target})")
    scored = seed(info, result.evaluations)  # rank 0's scores: the gate and evaluation read them
    if scored:
        context.log.info(f"scores from rank 0 kept for {', '.join(scored)} (evaluations/)")
    recorded = info.to_dict()
    value = {k: recorded[k] for k in _VALUE_KEYS}
    if result.best_loaded.get("sha256") == sha:  # for checkpoint_integrity (assets/checks.py)
        value["best_loaded"] = dict(result.best_loaded)
    champion = registry.champion_version()
    metadata = {
        "model_path": dg.MetadataValue.path(str(target)),
        "sha256": sha,
        "size_bytes": target.stat().st_size,
        "model_name": name,
        "version": result.run_id,
        "source_run": result.run_id,
        "source_checkpoint": dg.MetadataValue.path(best),
        metric.val_key: trained_model["best_value"],
        "config_hash": trained_model["config_hash"],
        "data_version": info.data_version or None,
        # before the gate: the champion_gate check's result says whether it moved
        "champion": "yes" if champion == result.run_id else f"no (champion: {champion or 'none'})",
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}
    return dg.Output(value, metadata=metadata, data_version=dg.DataVersion(sha[:16]))


def _version_record(
    trained_model: dict[str, Any], name: str, pipeline: str, target: Path, sha: str, by: str
) -> ModelVersion:
    """The ModelVersion of the run's best checkpoint, copied to `target`."""
    from tinyexp_core.contract import TrainResult
    from tinyexp_core.registry import now_iso

    result = TrainResult.from_dict(trained_model)
    return ModelVersion(
        name=name,
        version=result.run_id,
        pipeline=pipeline,
        path=str(target),
        sha256=sha,
        primary_metric=result.primary_metric,
        val_value=trained_model["best_value"],
        data_version=trained_model.get("data_version", ""),
        config_hash=trained_model["config_hash"],
        experiment=trained_model["experiment"],
        overrides=tuple(trained_model["overrides"]),
        dataset_path=trained_model["dataset_path"],
        source_run=result.run_id,
        created=now_iso(),
        created_by=by,
    )
