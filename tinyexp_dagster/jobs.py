"""A pipeline's jobs: `<name>_training_pipeline`, `<name>_retrain_job`, `<name>_evaluate_job`."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

PIPELINE = [
    "prepared_dataset",
    "trained_model",
    "model_checkpoint",
    "model_evaluation",
    "sweep_leaderboard",
]


def build_jobs(
    name: str, assets: Sequence[str], *, sweep: bool = False
) -> dict[str, UnresolvedAssetJobDefinition]:
    """The pipeline's jobs over the assets it holds (`assets`: names among PIPELINE), by role:
    `training` (everything), `retrain` (everything after the dataset), `evaluate` (only with
    an evaluation asset). Each selection includes its assets' checks. The steps run in the
    run's process: training parallelism is Ray's, and a step subprocess would only add
    start-up time (and a second copy of the definitions to load).

    With a `sweep`, a job run is one trial (a partition): the unpartitioned dataset and
    leaderboard are left to an asset backfill (or their own materialization), so the
    trials' runs do not each prepare the data again."""
    unpartitioned = ("prepared_dataset", "sweep_leaderboard") if sweep else ()
    keys = {
        asset: dg.AssetKey([name, asset])
        for asset in PIPELINE
        if asset in assets and asset not in unpartitioned
    }
    jobs = {
        "training": dg.define_asset_job(
            f"{name}_training_pipeline",
            selection=dg.AssetSelection.assets(*keys.values()),
            description=f"{name}: prepare data, train with DDP on Ray, promote the best "
            "checkpoint, evaluate (the steps the experiment implements).",
            tags={"tinyexp/pipeline": name},
            executor_def=dg.in_process_executor,
        ),
        "retrain": dg.define_asset_job(
            f"{name}_retrain_job",
            selection=dg.AssetSelection.assets(
                *[k for a, k in keys.items() if a != "prepared_dataset"]
            ),
            description=f"{name}: retrain on the latest prepared dataset, promote and evaluate.",
            tags={"tinyexp/pipeline": name},
            executor_def=dg.in_process_executor,
        ),
    }
    if "model_evaluation" in keys:
        jobs["evaluate"] = dg.define_asset_job(
            f"{name}_evaluate_job",
            selection=dg.AssetSelection.assets(keys["model_evaluation"]),
            description=f"{name}: re-evaluate the promoted checkpoint.",
            tags={"tinyexp/pipeline": name},
            executor_def=dg.in_process_executor,
        )
    return jobs
