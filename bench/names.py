"""The pipeline names the benchmarks drive, and the benchmarks themselves, in one place.

When the project's jobs and assets are renamed (one pipeline per experiment: `mnist_...`,
`mnist/...`), this is the file to change.
"""

from __future__ import annotations

CODE_LOCATION = "tinyexp_dagster.definitions"  # `dagster ... -m` module
PIPELINE = "mnist"  # the project's default pipeline (tinyexp_dagster/defs/mnist/defs.yaml)
TRAINING_JOB = f"{PIPELINE}_training_pipeline"
RETRAIN_JOB = f"{PIPELINE}_retrain_job"
# asset keys as user strings (`--select`, AssetKey.from_user_string, progress hashes)
PREPARED_DATASET = f"{PIPELINE}/prepared_dataset"
TRAINED_MODEL = f"{PIPELINE}/trained_model"
MODEL_EVALUATION = f"{PIPELINE}/model_evaluation"
# op (and step) names of those assets: the key's parts joined by "__"
TRAINED_MODEL_OP = TRAINED_MODEL.replace("/", "__")
MODEL_EVALUATION_OP = MODEL_EVALUATION.replace("/", "__")

# (module under bench/, section title, what it compares and against which targets) in the
# order `python -m bench` runs them: the cheap and quiet first, the ones that start Ray after.
BENCHMARKS = (
    (
        "input_pipeline",
        "4. Input pipeline",
        "TensorBatchLoader / TensorDataset+DataLoader, / BatchSampler DataLoader (no target), "
        "/ per-sample PIL DataLoader (>= 10), / training loop (>= 20)",
    ),
    (
        "sensor_cost",
        "6. Sensor cost, persistence included",
        "daemon-like tick at 1000 runs, SQLite on disk and Postgres (< 1 s); backlog drained",
    ),
    (
        "step_checkpoint",
        "10. Step checkpoints on / off",
        "step time on 2 ranks x 2 cores, step checkpoints every 20 steps on / off (<= 1.02)",
    ),
    (
        "storage_upload",
        "13. Checkpoints in object storage: background upload on / off, resume from the bucket",
        "step time, upload of step checkpoints on / off (<= 1.02); resume from the bucket",
    ),
    (
        "progress_overhead",
        "5. Progress reporting overhead",
        "step time, progress on / off (<= 1.01)",
    ),
    (
        "training_overhead",
        "1. Training overhead: trained_model vs a bare loop",
        "samples/s, trained_model / bare loop (>= 0.97)",
    ),
    (
        "ddp_scaling",
        "2. DDP scaling: Ray workers vs torchrun",
        "samples/s, 2 Ray workers / torchrun x2 (>= 0.95)",
    ),
    (
        "startup",
        "3. Startup: retrain_job vs Ray Train",
        "first step, retrain_job / TorchTrainer (<= 1.0; cold <= 0.6)",
    ),
    (
        "torchrun_compare",
        "9. The default path vs a plain torchrun script",
        "torchrun script vs retrain_job: epoch speed (>= 0.95); warm whole job (<= 1.3), "
        "first step (<= 1.0); cold whole job (<= 1.8), first step (<= 2.0); peak memory, "
        "largest rank warm and cold, step process, / the script's largest rank (<= 1.1)",
    ),
    (
        "warm_start",
        "11. Warm start: retrain_job on a running Ray vs a torchrun script",
        "first step, retrain_job on a warm Ray / torchrun script (<= 2.0)",
    ),
    (
        "orchestration",
        "7. Orchestration overhead of make run",
        "share of a warm make run's wall time outside the loops (<= 0.40)",
    ),
    (
        "sweep_trial",
        "14. A sweep trial on a warm Ray",
        "trial wall time / its training loop (<= 1.5)",
    ),
    (
        "sweep",
        "12. Sweep: early stopping vs none",
        "wall time with / without early stopping; best accuracy with / without (no target)",
    ),
)

# The code each benchmark measures, as paths for `git log`: a saved run older than a change
# to any of them is flagged stale on the page (`bench.provenance`). The benchmark's own
# modules count too: a change to the method changes the number.
_WHOLE_PATH = ("tinyexp_core", "tinyexp_dagster")  # the whole job: every part of it counts
MEASURES: dict[str, tuple[str, ...]] = {
    "input_pipeline": ("bench/input_pipeline.py", "tinyexp_core/data"),
    "sensor_cost": (
        "bench/sensor_cost.py",
        "tinyexp_dagster/sensors",
        "tinyexp_core/progress/",
    ),
    "step_checkpoint": (
        "bench/step_checkpoint.py",
        "tinyexp_core/training/step_checkpoint.py",
        "tinyexp_core/checkpoint/",
    ),
    "progress_overhead": (
        "bench/progress_overhead.py",
        "tinyexp_core/progress/",
        "tinyexp_core/services/redis_client.py",
        "tinyexp_core/training",
    ),
    "training_overhead": (
        "bench/training_overhead.py",
        "bench/bare_loop.py",
        "bench/ddp_exp.py",
        "tinyexp_core/training",
        "tinyexp_core/launchers",
        "tinyexp_core/accelerators",
        "tinyexp_core/examples/mnist_exp.py",
        "tinyexp_dagster/assets/training.py",
    ),
    "ddp_scaling": (
        "bench/ddp_scaling.py",
        "bench/bare_loop.py",
        "bench/ddp_exp.py",
        "tinyexp_core/launchers",
        "tinyexp_core/accelerators",
    ),
    "startup": ("bench/startup.py", "bench/torchtrainer_startup.py", *_WHOLE_PATH),
    "torchrun_compare": (
        "bench/torchrun_compare.py",
        "bench/torchrun_script.py",
        "bench/peak_rss.py",
        *_WHOLE_PATH,
    ),
    "warm_start": ("bench/warm_start.py", *_WHOLE_PATH),
    "orchestration": ("bench/orchestration.py", *_WHOLE_PATH),
    "sweep_trial": ("bench/sweep_trial.py", "bench/sweep_trial_defs.py", *_WHOLE_PATH),
    "sweep": ("bench/sweep.py", "tinyexp_core/sweep.py", "tinyexp_dagster/sweep"),
    "gpu_check": ("bench/gpu_check.py", "tinyexp_core/accelerators", "tinyexp_core/training"),
}
