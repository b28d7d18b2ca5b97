"""What the orchestrator forces on a training run's experiment, as typed values.

The run's identity, paths and progress settings, and the Ray resource's (or the run's)
workers, address and accelerator. The keys are `tinyexp_core.orchestration.ORCHESTRATED_KEYS`
(`RunOverrides.build` refuses any other); the values reach the experiment as they are, and
the accelerator is one the experiment's own accelerator config can take."""

from typing import Any

import dagster as dg

from ..resources import RayDDPResource, RedisProgressResource, StorageResource
from .common import PipelineSpec, config_failure

# Tag of a run that continues another run's directory (set by stalled_training_sensor).
RESUME_RUN_DIR_TAG = "tinyexp/resume_run_dir"


def run_forced(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    config: Any,
    dataset: dict[str, Any] | None,
    storage: StorageResource,
    redis: RedisProgressResource,
    ray: RayDDPResource,
    trains: bool,
) -> dict[str, Any]:
    """Every value forced on the run's experiment: identity, paths, progress, Ray. An
    object-store root is checked first (before Ray starts): one line naming the URI."""
    storage.check()
    forced = _identity(context, config, dataset, storage, redis, trains)
    forced.update(_ray_forced(context, spec, config, ray, str(storage.resolved_root())))
    return forced


def _identity(
    context: dg.AssetExecutionContext,
    config: Any,
    dataset: dict[str, Any] | None,
    storage: StorageResource,
    redis: RedisProgressResource,
    trains: bool,
) -> dict[str, Any]:
    """The run's identity, paths and progress settings."""
    # Retries and re-executions share the root run's directory, so they can resume; so does
    # the resume run that the stalled-training sensor requests (tagged with that directory).
    run_dir_id = (
        context.run.root_run_id or context.run.tags.get(RESUME_RUN_DIR_TAG) or context.run.run_id
    )
    # A run()-only experiment writes where it likes under output_root (TinyExp 0.0.1:
    # `<output_root>/<ClassName>/log.txt`): the run's directory is its output_root, so runs
    # do not share one, and it is the directory the asset records.
    output_root = storage.runs_dir() if trains else storage.runs_dir() / run_dir_id
    forced: dict[str, Any] = {
        "mode": "train",
        # URIs with an object-store root: each rank maps them to its own node's mirror.
        "output_root": storage.to_uri(output_root),
        "run_id": run_dir_id,
        **redis.forced(),
    }
    if dataset is not None:
        forced["data_cfg.prepared_path"] = storage.to_uri(dataset["path"])
    if trains:  # a run()-only experiment resumes (or not) by itself
        forced["resume_from"] = "auto" if config.resume == "auto" else ""
    return forced


def _ray_forced(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    config: Any,
    ray: RayDDPResource,
    storage_root: str,
) -> dict[str, Any]:
    """Workers, resources, accelerator and timeout: this run's choices over the resource's;
    the Ray address, a warm local Ray's when one runs for the storage root. The accelerator
    keys are fitted to the experiment's own accelerator config (`_fit_accelerator`)."""
    address = ray.run_address(storage_root, log=context.log.info)
    decided = ray.forced(**config.orchestration(), address=address)
    accelerator = {k: decided.pop(k) for k in list(decided) if k.startswith("accelerator_cfg.")}
    decided.update(_fit_accelerator(context, spec, config, accelerator, decided["num_workers"]))
    return decided


def _fit_accelerator(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    config: Any,
    decided: dict[str, Any],
    num_workers: int,
) -> dict[str, Any]:
    """The accelerator keys the experiment's config can take, said in the step log. An
    experiment may bring its own AcceleratorCfg (TinyExp 0.0.1's has `accelerator: str`
    with cpu and ddp only) or none: a key it lacks or a value it cannot take is not sent."""
    import dataclasses

    from tinyexp_core.exceptions import ConfigError
    from tinyexp_core.orchestration import accelerator_choices, experiment_accelerator

    requested = decided["accelerator_cfg.accelerator"]
    defaults = spec.defaults if spec.defaults is not None else spec.exp_cls()
    cfg = getattr(defaults, "accelerator_cfg", None)
    if not dataclasses.is_dataclass(cfg):
        if requested != "auto":
            context.log.warning(
                f"{spec.experiment} has no accelerator_cfg: the accelerator setting "
                f"{requested!r} does not reach it"
            )
        return {}
    known = {f.name for f in dataclasses.fields(cfg)}
    fitted = {k: v for k, v in decided.items() if k.partition(".")[2] in known}
    if "accelerator_cfg.collective_timeout_s" not in fitted and config.collective_timeout_s:
        context.log.warning(
            f"{spec.experiment}'s accelerator_cfg has no collective_timeout_s: "
            f"collective_timeout_s={config.collective_timeout_s} does not reach it"
        )
    if "accelerator" not in known:
        return fitted
    try:
        chosen, why = experiment_accelerator(requested, accelerator_choices(cfg), num_workers)
    except ConfigError as err:
        raise config_failure(err) from None
    if chosen is None:  # the experiment's default stands: worth a look, not a failure
        context.log.warning(f"accelerator: {why}")
        del fitted["accelerator_cfg.accelerator"]
    else:
        context.log.info(f"accelerator: {why}")
        fitted["accelerator_cfg.accelerator"] = chosen
    return fitted
