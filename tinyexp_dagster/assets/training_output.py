"""The training asset's results as Dagster outputs: a TrainResult with its metadata and
learning curves, or a run()-only experiment's output directory and return value."""

from typing import Any

import dagster as dg

from tinyexp_dagster.assets.common import PipelineSpec, config_hash, table
from tinyexp_dagster.assets.plan import TrainPlan
from tinyexp_dagster.curves import epoch_metadata

CURVES_FILE = "learning_curves.svg"  # in the run directory


def train_output(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    dataset: dict[str, Any] | None,
    summary: Any,
    plan: TrainPlan,
) -> dg.Output[dict[str, Any]]:
    """The TrainResult as the asset's value (plus what the downstream assets need)."""
    from tinyexp_core.contract import TrainResult

    exp, user = plan.exp, plan.user
    result = summary if isinstance(summary, TrainResult) else TrainResult.from_dict(summary)
    data_version = dataset["data_version"] if dataset else ""
    digest = config_hash(spec.experiment, user, data_version)
    metric = result.primary_metric
    rows = [_rounded_row(r.to_row()) for r in result.history]
    curves = write_curves_best_effort(context, rows, metric.name, result.run_dir)
    value = {
        **result.to_dict(),
        "experiment": spec.experiment,
        "overrides": user,
        "config_hash": digest,
        "dataset_path": dataset["path"] if dataset else "",
        "data_version": data_version,
        "exp_name": result.config.get("exp_name", spec.name),
    }
    metadata = {
        "epochs": result.num_epochs,
        "primary_metric": f"{metric.name} ({metric.direction})",
        f"best_val_{metric.name}": value["best_value"],
        "final_train_loss": value["final_train_loss"],
        "samples_per_s": value["samples_per_s"],
        "wall_time_s": value["wall_time_s"],
        "workers": exp.num_workers,
        "world_size": result.world_size,
        "resumed_from": result.resumed_from or "none",
        "per_epoch": table(rows),
        "learning_curves": dg.MetadataValue.path(str(curves)) if curves else None,
        **epoch_metadata(rows, metric.name),
        "overrides": dg.MetadataValue.json(user),
        "effective_config": dg.MetadataValue.json(result.config),
        "config_hash": digest,
        "run_dir": dg.MetadataValue.path(result.run_dir),
        "best_checkpoint": dg.MetadataValue.path(result.checkpoints.best),
    }
    if result.tracker.get("wandb_dir"):  # the W&B run, when wandb_cfg.enable_wandb=true
        metadata["wandb_dir"] = dg.MetadataValue.path(result.tracker["wandb_dir"])
    metadata = {k: v for k, v in metadata.items() if v is not None}
    return dg.Output(value, metadata=metadata, data_version=dg.DataVersion(digest))


def write_curves_best_effort(
    context: dg.AssetExecutionContext, rows: list[dict[str, Any]], metric: str, run_dir: str
) -> Any:
    """`<run_dir>/learning_curves.svg`, or None (with a warning) when it cannot be drawn: a
    picture never fails a finished training."""
    from tinyexp_core import storage
    from tinyexp_dagster.curves import svg_curves

    try:
        # An object-store run directory (a URI): drawn in this node's mirror, then uploaded.
        path = svg_curves(rows, metric, storage.local_path(run_dir) / CURVES_FILE)
        storage.publish(path)
        return path
    except Exception as err:  # disk full, a bad row: the run stands
        context.log.warning(f"learning curves not drawn: {type(err).__name__}: {err}")
        return None


def _rounded_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}
    out["epoch"] = int(row["epoch"]) + 1  # 1-based, as the logs and observations
    return out


def run_output(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    dataset: dict[str, Any] | None,
    summary: Any,
    plan: TrainPlan,
) -> dg.Output[dict[str, Any]]:
    """A `run()`-only experiment: its output directory and `run()`'s (JSON-safe) return."""
    import json

    exp, user = plan.exp, plan.user
    digest = config_hash(spec.experiment, user, "")
    returned = json.loads(json.dumps(summary, default=str))
    if not isinstance(returned, dict):
        returned = {"value": returned}
    value = {
        "experiment": spec.experiment,
        "overrides": user,
        "config_hash": digest,
        "run_id": exp.run_id,
        "run_dir": plan.run_dir(),
        "returned": returned,
        "config": exp.config_dict(),
    }
    metadata = {
        "run_dir": dg.MetadataValue.path(value["run_dir"]),
        "workers": exp.num_workers,
        "overrides": dg.MetadataValue.json(user),
        "effective_config": dg.MetadataValue.json(value["config"]),
        "returned": dg.MetadataValue.json(returned),
        "config_hash": digest,
    }
    return dg.Output(value, metadata=metadata, data_version=dg.DataVersion(digest))
