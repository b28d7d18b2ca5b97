"""`trained_model`: DDP training of the experiment on Ray, resumable across retries."""

from typing import Any, Literal, get_args

import dagster as dg
from pydantic import Field

from tinyexp_core.redaction import redact_overrides

from ..resources import RayDDPResource, RedisProgressResource, StorageResource
from ..resources.ray import RayAccelerator
from .common import (
    DEFAULT_EXPERIMENT,
    GROUP,
    build_experiment,
    config_failure,
    config_hash,
    table,
)

Resume = Literal["auto", "never"]
RESUME_CHOICES: tuple[str, ...] = get_args(Resume)
# "resource": the Ray resource's accelerator; the others replace it for this run.
TrainAccelerator = Literal["resource", RayAccelerator]
# Tag of a run that continues another run's directory (set by stalled_training_sensor).
RESUME_RUN_DIR_TAG = "tinyexp/resume_run_dir"


class TrainConfig(dg.Config):
    """Orchestration of one training run. Hyperparameters live in the experiment and are
    changed with `overrides` (`optimizer_cfg.lr=0.01`, as on the command line); what is
    decided here reaches the experiment as overrides too, so the run record states it."""

    experiment: str = Field(
        default=DEFAULT_EXPERIMENT, description="the experiment class, `package.module:Class`"
    )
    overrides: list[str] = Field(
        default=[], description="experiment overrides in the CLI's key=value syntax"
    )
    num_workers: int | None = Field(
        default=None, description="DDP ranks for this run; unset: the Ray resource's"
    )
    num_cpus_per_worker: float | None = Field(
        default=None, description="CPUs per rank for this run; unset: the Ray resource's"
    )
    num_gpus_per_worker: float | None = Field(
        default=None, description="GPUs per rank for this run; unset: the Ray resource's"
    )
    accelerator: TrainAccelerator = Field(
        default="resource",
        description="accelerator for this run (auto, cpu, ddp); resource: the Ray resource's",
    )
    collective_timeout_s: float | None = Field(
        default=None,
        description="seconds a rank may wait for a silent peer; unset: the Ray resource's",
    )
    resume: Resume = Field(
        default="auto",
        description="auto: a retry or re-execution continues from the run's last valid "
        "checkpoint; never: always train from scratch",
    )

    def orchestration(self) -> dict[str, Any]:
        """This run's choices that replace the Ray resource's (None: keep the resource's)."""
        return {
            "num_workers": self.num_workers,
            "num_cpus_per_worker": self.num_cpus_per_worker,
            "num_gpus_per_worker": self.num_gpus_per_worker,
            "accelerator": None if self.accelerator == "resource" else self.accelerator,
            "collective_timeout_s": self.collective_timeout_s,
        }


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
    from tinyexp_core.exceptions import TinyExpError, WorkerFailedError, is_retryable
    from tinyexp_core.experiment import ENV_ASSET, ENV_ATTEMPT
    from tinyexp_core.timing import mark

    forced = _forced(context, config, prepared_dataset, storage, redis)
    exp = build_experiment(
        config.experiment, config.overrides, [*forced, *_ray_forced(context, config, ray)]
    )
    try:
        progress = redis.for_run(str(storage.resolved_root()), context.run.run_id, log=context.log)
        identity = {ENV_ASSET: "trained_model", ENV_ATTEMPT: str(context.retry_number + 1)}
        spec = ray.spec(exp, env={**identity, **progress.env()})
    except TinyExpError as err:  # a bad URL or password, a request no cluster can hold
        raise config_failure(err) from None
    context.log.info(
        f"training {config.experiment} on {exp.num_workers} Ray workers, "
        f"overrides {redact_overrides(config.overrides) or 'none'}, run dir {exp.get_run_dir()}"
    )
    mark("launch_start")  # for the benchmarks (a no-op without a timing file)
    try:
        with progress.kept_in_use():
            summary = ray.run(exp, spec, log=context.log.info)[0]
        mark("launch_end")
    except Exception as err:
        by_rank = isinstance(err, WorkerFailedError)  # else no rank ever ran: nothing to mark
        if by_rank:
            progress.mark("failed", str(err))
        if not is_retryable(err):  # every attempt would meet it again
            raise config_failure(
                err, "rejected by the workers" if by_rank else "invalid configuration"
            ) from None
        raise
    except BaseException as err:  # Dagster termination, KeyboardInterrupt
        progress.mark("cancelled", type(err).__name__)
        if _termination_requested(context):
            # The in-process executor retries an interrupted step under its RetryPolicy,
            # which would start training again in a run the user terminated.
            raise dg.Failure(
                "training stopped: the run was terminated (Ray workers removed)",
                allow_retries=False,
            ) from err
        raise
    return _output(config, prepared_dataset, summary, exp.num_workers)


def _forced(
    context: dg.AssetExecutionContext,
    config: TrainConfig,
    dataset: dict[str, Any],
    storage: StorageResource,
    redis: RedisProgressResource,
) -> list[str]:
    """The run's identity, paths and progress settings, as experiment overrides."""
    # Retries and re-executions share the root run's directory, so they can resume; so does
    # the resume run that the stalled-training sensor requests (tagged with that directory).
    run_dir_id = (
        context.run.root_run_id or context.run.tags.get(RESUME_RUN_DIR_TAG) or context.run.run_id
    )
    return [
        "mode=train",
        f"output_root={storage.runs_dir()}",
        f"run_id={run_dir_id}",
        f"data_cfg.prepared_path={dataset['path']}",
        f"resume_from={'auto' if config.resume == 'auto' else ''}",
        *redis.overrides(),
    ]


def _ray_forced(
    context: dg.AssetExecutionContext, config: TrainConfig, ray: RayDDPResource
) -> list[str]:
    """Workers, resources, accelerator and timeout: this run's choices over the resource's."""
    import dataclasses

    from tinyexp_core.config import load_exp_class
    from tinyexp_core.exceptions import ConfigError

    try:
        fields = {f.name for f in dataclasses.fields(load_exp_class(config.experiment))}
    except ConfigError as err:
        raise config_failure(err) from None
    choices = config.orchestration()
    has_accelerator_cfg = "accelerator_cfg" in fields
    if not has_accelerator_cfg and (choices["accelerator"] or ray.accelerator) != "auto":
        context.log.warning(
            f"{config.experiment} has no accelerator_cfg: the accelerator setting "
            f"{choices['accelerator'] or ray.accelerator!r} does not reach it"
        )
    return ray.overrides(**choices, has_accelerator_cfg=has_accelerator_cfg)


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
    if summary.get("wandb_dir"):  # the W&B run, when wandb_cfg.enable_wandb=true
        metadata["wandb_dir"] = dg.MetadataValue.path(summary["wandb_dir"])
    return dg.Output(value, metadata=metadata, data_version=dg.DataVersion(digest))
