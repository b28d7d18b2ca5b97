"""`trained_model`: DDP training of the experiment on Ray, resumable across retries."""

import contextlib
from collections.abc import Iterator
from typing import Any

import dagster as dg

from tinyexp_core.redaction import redact_overrides

from ..resources import RayDDPResource, RedisProgressResource, StorageResource
from .common import (
    DEFAULT_EXPERIMENT,
    GROUP,
    build_experiment,
    config_failure,
    config_hash,
    table,
)

RESUME_CHOICES = ("auto", "never")
# Tag of a run that continues another run's directory (set by stalled_training_sensor).
RESUME_RUN_DIR_TAG = "tinyexp/resume_run_dir"


class TrainConfig(dg.Config):
    """Orchestration of one training run. Hyperparameters live in the experiment and are
    changed with `overrides` (`optimizer_cfg.lr=0.01`, as on the command line)."""

    experiment: str = DEFAULT_EXPERIMENT
    overrides: list[str] = []
    num_workers: int | None = None  # None: the Ray resource's
    num_cpus_per_worker: float | None = None
    num_gpus_per_worker: float | None = None
    # auto: a retry or re-execution continues from the run's last valid checkpoint
    resume: str = "auto"


def _progress_env(
    context: dg.AssetExecutionContext, redis: RedisProgressResource, root: str
) -> dict[str, str]:
    """The progress store for the ranks. A malformed URL or a rejected password is a
    configuration error and fails the step now; an unreachable server only turns
    progress off, since progress never decides whether a model trains."""
    from tinyexp_core.exceptions import ConfigError, TinyExpError

    try:
        url = redis.resolve_url(root)
        redis.check_auth(url)
    except ConfigError as err:
        raise config_failure(err) from None
    except TinyExpError as err:
        context.log.warning(f"progress reporting off: {err}")
        return {}
    context.log.info(f"progress in Redis at {redis.redacted(url)}")
    return {"TINYEXP_PROGRESS_URL": url}


@contextlib.contextmanager
def _kept_in_use(url: str | None) -> Iterator[None]:
    """Hold one connection to the progress store while the ranks run: an embedded Redis's
    idle watcher counts it as a user, so it cannot stop the server while Ray is still
    starting the ranks (before they connect)."""
    from tinyexp_core.redis_client import make_client

    client = make_client(url) if url else None
    try:
        if client is not None:
            with contextlib.suppress(Exception):  # best effort, like every progress write
                client.ping()
        yield
    finally:
        if client is not None:
            client.close()


def _mark(url: str | None, run_id: str, status: str, error: str) -> None:
    """Record a final status the ranks could not write themselves (killed or cancelled)."""
    if not url:
        return
    import contextlib

    from tinyexp_core.progress import mark_status
    from tinyexp_core.redis_client import make_client

    with contextlib.suppress(Exception):
        mark_status(make_client(url), run_id, status, error)


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"pytorch", "ray"},
    retry_policy=dg.RetryPolicy(max_retries=1, delay=2),
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    prepared_dataset: dict[str, Any],
    ray: RayDDPResource,
    redis: RedisProgressResource,
    storage: StorageResource,
) -> dg.Output[dict[str, Any]]:
    """DDP training on Ray workers; checkpoints under runs/<run_id>/checkpoints."""
    from tinyexp_core.exceptions import (
        CheckpointError,
        ConfigError,
        DatasetError,
        InsufficientResourcesError,
        WorkerFailedError,
    )
    from tinyexp_core.timing import mark

    if config.resume not in RESUME_CHOICES:
        raise config_failure(ValueError(f"resume={config.resume!r}, allowed: {RESUME_CHOICES}"))
    root = str(storage.resolved_root())
    # Retries and re-executions share the root run's directory, so they can resume; so does
    # the resume run that the stalled-training sensor requests (tagged with that directory).
    run_dir_id = (
        context.run.root_run_id or context.run.tags.get(RESUME_RUN_DIR_TAG) or context.run.run_id
    )
    forced = [
        "mode=train",
        f"output_root={storage.runs_dir()}",
        f"run_id={run_dir_id}",
        f"data_cfg.prepared_path={prepared_dataset['path']}",
        f"resume_from={'auto' if config.resume == 'auto' else ''}",
        *ray.accelerator_override(),
    ]
    exp = build_experiment(config.experiment, config.overrides, forced)
    try:
        spec = ray.spec(
            num_workers=config.num_workers,
            num_cpus_per_worker=config.num_cpus_per_worker,
            num_gpus_per_worker=config.num_gpus_per_worker,
        )
    except (ConfigError, InsufficientResourcesError) as err:  # retrying cannot help either
        raise config_failure(err) from None
    spec.env.update(
        {
            "TINYEXP_PROGRESS_RUN_ID": context.run.run_id,
            "TINYEXP_ASSET": "trained_model",
            "TINYEXP_ATTEMPT": str(context.retry_number + 1),
            **_progress_env(context, redis, root),
        }
    )
    context.log.info(
        f"training {config.experiment} on {spec.num_workers} Ray workers, "
        f"overrides {redact_overrides(config.overrides) or 'none'}, run dir {exp.get_run_dir()}"
    )
    progress_url = spec.env.get("TINYEXP_PROGRESS_URL")
    mark("launch_start")  # for the benchmarks (a no-op without a timing file)
    try:
        with _kept_in_use(progress_url):
            summary = ray.run(exp, spec, log=context.log.info)[0]
        mark("launch_end")
    except InsufficientResourcesError as err:  # checked against the cluster, before any rank
        raise config_failure(err) from None
    except WorkerFailedError as err:
        _mark(progress_url, context.run.run_id, "failed", str(err))
        if isinstance(err.__cause__, (ConfigError, CheckpointError, DatasetError)):
            # A rank rejected the config, a checkpoint or the data: every attempt would.
            raise config_failure(err, "rejected by the workers") from None
        raise
    except Exception:
        raise
    except BaseException as err:  # Dagster termination, KeyboardInterrupt
        _mark(progress_url, context.run.run_id, "cancelled", type(err).__name__)
        if _termination_requested(context):
            # The in-process executor retries an interrupted step under its RetryPolicy,
            # which would start training again in a run the user terminated.
            raise dg.Failure(
                "training stopped: the run was terminated (Ray workers removed)",
                allow_retries=False,
            ) from err
        raise
    return _output(config, prepared_dataset, summary, spec.num_workers)


def _termination_requested(context: dg.AssetExecutionContext) -> bool:
    """Whether someone asked Dagster to terminate this run (UI, GraphQL, the instance)."""
    run = context.instance.get_run_by_id(context.run.run_id)
    return run is not None and run.status in (
        dg.DagsterRunStatus.CANCELING,
        dg.DagsterRunStatus.CANCELED,
    )


def _output(
    config: TrainConfig, dataset: dict[str, Any], summary: dict[str, Any], workers: int
) -> dg.Output[dict[str, Any]]:
    digest = config_hash(config.experiment, config.overrides, dataset["data_version"])
    history = summary["history"]
    value = {
        "experiment": config.experiment,
        "overrides": redact_overrides(config.overrides),
        "config_hash": digest,
        "dataset_path": dataset["path"],
        "data_version": dataset["data_version"],
        "run_id": summary["run_id"],
        "run_dir": summary["run_dir"],
        "best_checkpoint": summary["best_checkpoint"],
        "last_checkpoint": summary["last_checkpoint"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "exp_name": summary["config"].get("exp_name", "model"),
    }
    per_epoch = [
        {
            "epoch": int(h["epoch"]) + 1,
            "train_loss": round(h["train_loss"], 5),
            "val_loss": round(h["val_loss"], 5),
            "val_accuracy": round(h["val_accuracy"], 5),
            "lr": h["lr"],
            "samples_per_s": round(h["samples_per_s"], 1),
        }
        for h in history
    ]
    metadata = {
        "epochs": summary["epochs"],
        "final_train_loss": summary["final_train_loss"],
        "best_val_accuracy": summary["best_val_accuracy"],
        "samples_per_s": summary["samples_per_s"],
        "wall_time_s": summary["wall_time_s"],
        "workers": workers,
        "world_size": summary["world_size"],
        "resumed_from": summary["resumed_from"] or "none",
        "per_epoch": table(per_epoch),
        "overrides": dg.MetadataValue.json(redact_overrides(config.overrides)),
        "effective_config": dg.MetadataValue.json(summary["config"]),
        "config_hash": digest,
        "run_dir": dg.MetadataValue.path(summary["run_dir"]),
        "best_checkpoint": dg.MetadataValue.path(summary["best_checkpoint"]),
    }
    return dg.Output(value, metadata=metadata, data_version=dg.DataVersion(digest))
