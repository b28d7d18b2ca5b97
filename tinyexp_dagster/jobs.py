"""Jobs over the pipeline's assets."""

from __future__ import annotations

import dagster as dg

PIPELINE = ["prepared_dataset", "trained_model", "model_checkpoint", "model_evaluation"]

training_pipeline = dg.define_asset_job(
    "training_pipeline",
    selection=dg.AssetSelection.assets(*PIPELINE),
    description="Prepare data, train with DDP on Ray, promote the best checkpoint, evaluate.",
)

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets(*PIPELINE[1:]),
    description="Retrain on the latest prepared dataset, promote and evaluate.",
)

evaluate_job = dg.define_asset_job(
    "evaluate_job",
    selection=dg.AssetSelection.assets("model_evaluation"),
    description="Re-evaluate the promoted checkpoint.",
)

JOBS = [training_pipeline, retrain_job, evaluate_job]
