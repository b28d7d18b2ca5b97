"""`<name>/trained_model`: DDP training of the experiment on Ray, resumable across retries.

Two shapes, by what the experiment implements: `train()` -> a TrainResult (checkpoints,
history, primary metric), read by the checkpoint and evaluation assets; only `run()`
(TinyExp 0.0.1 style) -> the run's output directory and `run()`'s return value."""

from typing import Any, Literal, get_args

import dagster as dg
from pydantic import Field

from tinyexp_core.redaction import redact_overrides

from ..curves import epoch_metadata
from ..resources import RayDDPResource, RedisProgressResource, StorageResource
from ..resources.ray import RayAccelerator
from ..schema import with_exp_field
from .common import PipelineSpec, build_experiment, config_failure, config_hash, table
from .forced import RESUME_RUN_DIR_TAG, run_forced  # noqa: F401 (the tag's home for sensors)
from .sweep import SweepMonitor, board_key, partitions_def, pool_name, pruned_output, sweep_scope

Resume = Literal["auto", "never"]
RESUME_CHOICES: tuple[str, ...] = get_args(Resume)
# "resource": the Ray resource's accelerator; the others replace it for this run.
TrainAccelerator = Literal["resource", RayAccelerator]
CURVES_FILE = "learning_curves.png"  # in the run directory


class TrainConfig(dg.Config):
    """Orchestration of one training run. Hyperparameters live in the experiment and are
    changed with `exp` (typed) or `overrides` (`optimizer_cfg.lr=0.01`, as on the command
    line; applied after `exp`); what is decided here reaches the experiment as overrides
    too, so the run record states it."""

    overrides: list[str] = Field(
        default=[],
        description="experiment overrides in the CLI's key=value syntax, applied after `exp`",
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


def build_trained_model(
    spec: PipelineSpec, *, with_dataset: bool, trains: bool
) -> dg.AssetsDefinition:
    """The pipeline's training asset; `with_dataset`: it reads `<name>/prepared_dataset`
    (the experiment implements `prepare_data`), else the experiment reads its own data;
    `trains`: `train()` returns a TrainResult, else `run()`'s value is recorded as is."""
    config_cls = with_exp_field(
        TrainConfig, spec.exp_cls, defaults=spec.defaults, name=f"{spec.name}_TrainConfig"
    )
    what = "DDP training on Ray workers; checkpoints under runs/<run_id>/checkpoints."
    if not trains:
        what = "run() on Ray workers (TinyExp 0.0.1 style); records the output directory."
    decorator = dg.asset(
        key=spec.key("trained_model"),
        group_name=spec.name,
        code_version="1",
        kinds={"pytorch", "ray"},
        retry_policy=dg.RetryPolicy(max_retries=1, delay=2),
        description=f"{spec.name}: {what}",
        ins={"prepared_dataset": dg.AssetIn(spec.key("prepared_dataset"))} if with_dataset else {},
        partitions_def=partitions_def(spec),
        # A sweep's trials wait in Dagster for one of the pool's max_concurrent slots.
        pool=pool_name(spec.name) if spec.sweep is not None else None,
    )
    output = _output if trains else _run_output

    def body(context, config, dataset, ray, redis, storage) -> dg.Output[dict[str, Any]]:
        # The run's overrides, each parsed once; their text is the run's record.
        layers = spec.run_overrides(config.exp, config.overrides, spec.trial(context))
        user = redact_overrides(layers.texts())
        exp, summary, sweep = _train(
            context, spec, config, dataset, ray, redis, storage, trains, layers, user
        )
        out = output(context, spec, dataset, summary, exp, user)
        if sweep:
            metadata = {**out.metadata, **sweep}
            out = dg.Output(out.value, metadata=metadata, data_version=out.data_version)
        return out

    if with_dataset:

        @decorator
        def trained_model(
            context: dg.AssetExecutionContext,
            config: config_cls,
            prepared_dataset: dict[str, Any],
            ray: RayDDPResource,
            redis: RedisProgressResource,
            storage: StorageResource,
        ) -> dg.Output[dict[str, Any]]:
            return body(context, config, prepared_dataset, ray, redis, storage)

        return trained_model

    @decorator
    def trained_model_own_data(
        context: dg.AssetExecutionContext,
        config: config_cls,
        ray: RayDDPResource,
        redis: RedisProgressResource,
        storage: StorageResource,
    ) -> dg.Output[dict[str, Any]]:
        return body(context, config, None, ray, redis, storage)

    return trained_model_own_data


def _train(context, spec, config, dataset, ray, redis, storage, trains: bool, layers, user):
    """Build the experiment from the run's override layers and the forced values, run it
    on the Ray ranks; returns (experiment, rank 0's result, the sweep trial's metadata or
    {}). `user`: the layers' text, credentials hidden, for the log."""
    import time

    from tinyexp_core.exceptions import (
        RunStoppedError,
        TinyExpError,
        WorkerFailedError,
        is_retryable,
    )
    from tinyexp_core.experiment import ENV_ASSET, ENV_ATTEMPT
    from tinyexp_core.stop import clear_stop
    from tinyexp_core.timing import mark

    forced = run_forced(context, spec, config, dataset, storage, redis, ray, trains)
    exp = build_experiment(spec.exp_cls, layers, forced)
    try:
        progress = redis.for_run(str(storage.resolved_root()), context.run.run_id, log=context.log)
        # The progress hash names the full asset key, so the shared progress sensor puts
        # its observations on this pipeline's trained_model.
        identity = {
            ENV_ASSET: context.asset_key.to_user_string(),
            ENV_ATTEMPT: str(context.retry_number + 1),
        }
        launch = ray.spec(exp, env={**identity, **progress.env()})
    except TinyExpError as err:  # a bad URL or password, a request no cluster can hold
        raise config_failure(err) from None
    context.log.info(
        f"training {spec.experiment} on {exp.num_workers} Ray workers, "
        f"overrides {user or 'none'}, run dir {_run_dir(exp, trains)}"
    )
    monitor = _sweep_monitor(context, spec, progress)
    mark("launch_start")  # for the benchmarks (a no-op without a timing file)
    started = time.perf_counter()
    try:
        with progress.kept_in_use(), monitor.watching():
            summary = ray.run(exp, launch, log=context.log.info)[0]
        mark("launch_end")
    except RunStoppedError as err:
        if monitor.pruned_at is None:
            # A stop was asked for in this process (`tinyexp_core.stop.request_stop`): rank 0
            # wrote a step checkpoint. A retry would train again in a run someone stopped.
            clear_stop()  # the request is spent: a later step or run here starts clean
            progress.mark("cancelled", str(err))
            monitor.finish("failed", error="stopped")
            raise dg.Failure(
                f"training stopped: {err}; resume=auto continues from its checkpoint",
                metadata={"checkpoint": err.checkpoint, "step": err.step},
                allow_retries=False,
            ) from err
        clear_stop()  # the request was this trial's; the process's next step starts clean
        context.log.warning(f"trial {context.partition_key} pruned: {err}")
        summary = pruned_output(spec, exp, monitor, err, started)
        monitor.finish("pruned", pruned_at_epoch=monitor.pruned_at)
        return exp, summary, _trial_metadata(context, spec, monitor, "pruned", err.checkpoint)
    except Exception as err:
        monitor.finish("failed", error=type(err).__name__)
        by_rank = isinstance(err, WorkerFailedError)  # else no rank ever ran: nothing to mark
        if by_rank:
            progress.mark("failed", str(err))
        if not is_retryable(err):  # every attempt would meet it again
            raise config_failure(
                err, "rejected by the workers" if by_rank else "invalid configuration"
            ) from None
        raise
    except BaseException as err:  # Dagster termination, KeyboardInterrupt
        # A verdict written before the termination (the stall sensor's `failed`) stands.
        progress.mark("cancelled", type(err).__name__, only_if_active=True)
        monitor.finish("failed", error=type(err).__name__)
        if _termination_requested(context):
            # The in-process executor retries an interrupted step under its RetryPolicy,
            # which would start training again in a run the user terminated.
            raise dg.Failure(
                "training stopped: the run was terminated (Ray workers removed)",
                allow_retries=False,
            ) from err
        raise
    clear_stop()  # a pruning decision that came after the last step
    if spec.sweep is None:
        return exp, summary, {}
    monitor.finish("finished")
    return exp, summary, _trial_metadata(context, spec, monitor, "finished", "")


def _sweep_monitor(context, spec: PipelineSpec, progress) -> SweepMonitor:
    """The run's sweep monitor (inactive without a sweep or a progress store)."""
    if spec.sweep is None:
        return SweepMonitor(spec, None, None, context.run.run_id, "")
    pool, limit = pool_name(spec.name), spec.sweep.max_concurrent
    slots = context.instance.event_log_storage.get_concurrency_info(pool).slot_count
    if slots != limit:
        context.log.warning(
            f"concurrency pool {pool} has {slots} slots, not max_concurrent={limit}: "
            f"{spec.name}_sweep_pool_sensor sets it (or `dagster instance concurrency set "
            f"{pool} {limit}`)"
        )
    trial = spec.sweep.trial(context.partition_key)
    key = board_key(spec.name, sweep_scope(context))
    return SweepMonitor(spec, trial, progress.url, context.run.run_id, key)


def _trial_metadata(context, spec, monitor: SweepMonitor, status: str, stop_checkpoint: str):
    """What the leaderboard reads from a trial's materialization."""
    trial = spec.sweep.trial(context.partition_key)
    metadata: dict[str, Any] = {
        "sweep_status": status,
        "sweep_trial": trial.key,
        "sweep_overrides": dg.MetadataValue.json(trial.overrides),
    }
    if monitor.pruned_at is not None and status == "pruned":
        metadata["pruned_at_epoch"] = monitor.pruned_at
        metadata["stop_checkpoint"] = dg.MetadataValue.path(stop_checkpoint)
    if monitor.error:
        metadata["sweep_monitor_error"] = monitor.error
    return metadata


def _run_dir(exp: Any, trains: bool) -> str:
    """The run's directory: `<output_root>/<run_id>` for a trainer; a run()-only
    experiment's own output_root (created, so the recorded path exists)."""
    if trains:
        return exp.get_run_dir()
    from pathlib import Path

    Path(exp.output_root).mkdir(parents=True, exist_ok=True)
    return exp.output_root


def _termination_requested(context: dg.AssetExecutionContext) -> bool:
    """Whether someone asked Dagster to terminate this run (UI, GraphQL, the instance), or
    terminated it and marked it failed (the stall sensor, after a second hang at one step)."""
    run = context.instance.get_run_by_id(context.run.run_id)
    return run is not None and run.status in (
        dg.DagsterRunStatus.CANCELING,
        dg.DagsterRunStatus.CANCELED,
        dg.DagsterRunStatus.FAILURE,
    )


def _output(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    dataset: dict[str, Any] | None,
    summary: Any,
    exp: Any,
    user: list[str],
) -> dg.Output[dict[str, Any]]:
    """The TrainResult as the asset's value (plus what the downstream assets need);
    `user`: the run's overrides as text, credentials hidden."""
    from tinyexp_core.contract import TrainResult

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
    """`<run_dir>/learning_curves.png`, or None (with a warning) when it cannot be drawn: a
    picture never fails a finished training."""
    from tinyexp_core import storage

    from ..curves import plot_curves

    try:
        # An object-store run directory (a URI): drawn in this node's mirror, then uploaded.
        path = plot_curves([("run", rows)], metric, storage.local_path(run_dir) / CURVES_FILE)
        storage.publish(path)
        return path
    except Exception as err:  # matplotlib missing or broken, disk full: the run stands
        context.log.warning(f"learning curves not drawn: {type(err).__name__}: {err}")
        return None


def _rounded_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}
    out["epoch"] = int(row["epoch"]) + 1  # 1-based, as the logs and observations
    return out


def _run_output(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    dataset: dict[str, Any] | None,
    summary: Any,
    exp: Any,
    user: list[str],
) -> dg.Output[dict[str, Any]]:
    """A `run()`-only experiment: its output directory and `run()`'s (JSON-safe) return."""
    import json

    digest = config_hash(spec.experiment, user, "")
    returned = json.loads(json.dumps(summary, default=str))
    if not isinstance(returned, dict):
        returned = {"value": returned}
    value = {
        "experiment": spec.experiment,
        "overrides": user,
        "config_hash": digest,
        "run_id": exp.run_id,
        "run_dir": _run_dir(exp, trains=False),
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
