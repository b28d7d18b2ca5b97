"""The pipeline names the benchmarks drive, and the benchmarks themselves, in one place.

When the project's jobs and assets are renamed (one pipeline per experiment: `mnist_...`,
`mnist/...`), this is the file to change.
"""

from __future__ import annotations

CODE_LOCATION = "tinyexp_dagster.definitions"  # `dagster ... -m` module
TRAINING_JOB = "training_pipeline"
RETRAIN_JOB = "retrain_job"
PREPARED_DATASET = "prepared_dataset"  # asset (and op) names
TRAINED_MODEL = "trained_model"
MODEL_EVALUATION = "model_evaluation"

# (module under bench/, section title) in the order `python -m bench` runs them: the cheap
# and quiet first, the ones that start Ray after.
BENCHMARKS = (
    ("input_pipeline", "4. Input pipeline"),
    ("sensor_cost", "6. Sensor cost, persistence included"),
    ("progress_overhead", "5. Progress reporting overhead"),
    ("training_overhead", "1. Training overhead: trained_model vs a bare loop"),
    ("ddp_scaling", "2. DDP scaling: Ray workers vs torchrun"),
    ("startup", "3. Startup: retrain_job vs Ray Train"),
    ("torchrun_compare", "9. The default path vs a plain torchrun script"),
    ("orchestration", "7. Orchestration overhead of make run"),
)
