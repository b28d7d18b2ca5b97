"""`<name>/trained_model`: DDP training of the experiment on Ray, resumable across retries.

Two shapes, by what the experiment implements: `train()` -> a TrainResult (checkpoints,
history, primary metric), read by the checkpoint and evaluation assets; only `run()`
(TinyExp 0.0.1 style) -> the run's output directory and `run()`'s return value.

In three parts: the run plan (`plan.py`: identity, tags, forced overrides, resume), the
asset body here, and the outcome policy (`outcome.py`: retry, stop, prune, fail)."""

from typing import Any, Literal, get_args

import dagster as dg
from pydantic import Field

from tinyexp_dagster.assets.common import PipelineSpec
from tinyexp_dagster.assets.outcome import train_on_ray
from tinyexp_dagster.assets.plan import RESUME_RUN_DIR_TAG, make_plan  # noqa: F401 (the tag's import path)
from tinyexp_dagster.assets.training_output import (
    CURVES_FILE,
    run_output,
    train_output,
    write_curves_best_effort,
)
from tinyexp_dagster.resources import RayDDPResource, RedisProgressResource, StorageResource
from tinyexp_dagster.resources.ray import RayAccelerator
from tinyexp_dagster.schema import with_exp_field
from tinyexp_dagster.sweep import partitions_def, pool_name

__all__ = [
    "CURVES_FILE",
    "RESUME_CHOICES",
    "RESUME_RUN_DIR_TAG",
    "TrainConfig",
    "build_trained_model",
    "write_curves_best_effort",
]

Resume = Literal["auto", "never"]
RESUME_CHOICES: tuple[str, ...] = get_args(Resume)
# "resource": the Ray resource's accelerator; the others replace it for this run.
TrainAccelerator = Literal["resource", RayAccelerator]


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
    decorator = _asset_decorator(spec, with_dataset=with_dataset, trains=trains)
    output = train_output if trains else run_output

    def body(context, config, dataset, ray, redis, storage) -> dg.Output[dict[str, Any]]:
        plan = make_plan(context, spec, config, dataset, (ray, redis, storage), trains)
        context.log.info(
            f"training {spec.experiment} on {plan.exp.num_workers} Ray workers, "
            f"overrides {plan.user or 'none'}, run dir {plan.run_dir()}"
        )
        if trains:
            plan.exp.evaluate_after_train = after_training_splits(context, spec)
        summary, sweep = train_on_ray(context, spec, plan, ray)
        out = output(context, spec, dataset, summary, plan)
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


def after_training_splits(context: dg.AssetExecutionContext, spec: PipelineSpec) -> tuple:
    """The splits rank 0 scores the best checkpoint on as training ends (training/after.py):
    the champion gate's and model_evaluation's, when this run registers the version; their
    steps then read the scores from the registry's cache instead of loading PyTorch."""
    from tinyexp_dagster.assets.champion import GATE_SPLIT
    from tinyexp_dagster.assets.evaluation import DEFAULT_SPLIT

    # The run's selection, or every asset of its job (an op's own selected_asset_keys
    # names only the asset it materializes).
    selected = context.run.asset_selection or context.job_def.asset_layer.executable_asset_keys
    if spec.key("model_checkpoint") not in selected:
        return ()
    return (GATE_SPLIT, DEFAULT_SPLIT)


def _asset_decorator(spec: PipelineSpec, *, with_dataset: bool, trains: bool) -> Any:
    """`dg.asset(...)` for the pipeline's training asset: key, retries, partitions, pool."""
    what = "DDP training on Ray workers; checkpoints under runs/<run_id>/checkpoints."
    if not trains:
        what = "run() on Ray workers (TinyExp 0.0.1 style); records the output directory."
    return dg.asset(
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
