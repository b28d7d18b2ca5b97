"""The training run's plan: one home for who the run is (its directory, asset, attempt),
the tag that links it to the run it continues, what the orchestrator forces on the
experiment, and whether it resumes. Built before any compute: a bad value fails the step
here, without retries, before a rank starts (the default local Ray may be starting already:
a run that trains starts it when the run starts, `RayDDPResource.setup_for_execution`)."""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from tinyexp_core.redaction import redact_overrides
from tinyexp_dagster.assets.common import PipelineSpec, build_experiment, config_failure
from tinyexp_dagster.assets.forced import ray_forced
from tinyexp_dagster.resources import RayDDPResource, RedisProgressResource, StorageResource

# Tag of a run that continues another run's directory (set by stalled_training_sensor and
# `tinyexp-dagster resume`).
RESUME_RUN_DIR_TAG = "tinyexp/resume_run_dir"


def run_dir_id(run: Any) -> str:
    """The run directory's id a Dagster run trains in: retries and re-executions share the
    root run's, a resume run (tagged) continues the one it names, else the run's own."""
    return run.root_run_id or run.tags.get(RESUME_RUN_DIR_TAG) or run.run_id


@dataclass(frozen=True)
class TrainPlan:
    """Everything decided before the ranks start."""

    exp: Any  # the experiment, overrides and forced values applied
    user: list[str]  # the run's override layers as text, credentials hidden: its record
    run_dir_id: str
    resume: bool  # continue the run directory's last valid checkpoint (when there is one)
    progress: Any  # the run's RunProgress
    launch: Any  # the RayLaunchSpec, read back from the experiment
    storage_root: str  # as configured (a local path or a URI): what `--storage-root` takes
    trains: bool  # train() -> TrainResult; else a run()-only experiment

    def run_dir(self) -> str:
        """`<output_root>/<run_id>` for a trainer; a run()-only experiment's own
        output_root (created, so the recorded path exists)."""
        if self.trains:
            return self.exp.get_run_dir()
        from pathlib import Path

        Path(self.exp.output_root).mkdir(parents=True, exist_ok=True)
        return self.exp.output_root


def make_plan(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    config: Any,
    dataset: dict[str, Any] | None,
    resources: tuple[RayDDPResource, RedisProgressResource, StorageResource],
    trains: bool,
) -> TrainPlan:
    """The run's plan from its config, its dataset and the resources (ray, redis, storage).
    An object-store root is checked first (before a rank starts): one line naming the URI."""
    from tinyexp_core.config.env import ENV_ASSET, ENV_ATTEMPT
    from tinyexp_core.config.exceptions import TinyExpError

    ray, redis, storage = resources
    storage.check()
    root = str(storage.resolved_root())
    layers = spec.run_overrides(config.exp, config.overrides, spec.trial(context))
    forced = _identity(context, config, dataset, storage, redis, trains)
    forced.update(ray_forced(context, spec, config, ray, root))
    exp = build_experiment(spec.exp_cls, layers, forced)
    try:
        progress = redis.for_run(root, context.run.run_id, log=context.log)
        # The progress hash names the full asset key, so the shared progress sensor puts
        # its observations on this pipeline's trained_model.
        identity = {
            ENV_ASSET: context.asset_key.to_user_string(),
            ENV_ATTEMPT: str(context.retry_number + 1),
        }
        launch = ray.spec(exp, env={**identity, **progress.env()})
    except TinyExpError as err:  # a bad URL or password, a request no cluster can hold
        raise config_failure(err) from None
    return TrainPlan(
        exp=exp,
        user=redact_overrides(layers.texts()),
        run_dir_id=forced["run_id"],
        resume=bool(forced.get("resume_from")),
        progress=progress,
        launch=launch,
        storage_root=storage.root_location(),
        trains=trains,
    )


def _identity(
    context: dg.AssetExecutionContext,
    config: Any,
    dataset: dict[str, Any] | None,
    storage: StorageResource,
    redis: RedisProgressResource,
    trains: bool,
) -> dict[str, Any]:
    """The run's identity, paths, progress settings and resume decision, as forced values."""
    run_id = run_dir_id(context.run)
    # A run()-only experiment writes where it likes under output_root (TinyExp 0.0.1:
    # `<output_root>/<ClassName>/log.txt`): the run's directory is its output_root, so runs
    # do not share one, and it is the directory the asset records.
    output_root = storage.runs_dir() if trains else storage.runs_dir() / run_id
    forced: dict[str, Any] = {
        "mode": "train",
        # URIs with an object-store root: each rank maps them to its own node's mirror.
        "output_root": storage.to_uri(output_root),
        "run_id": run_id,
        **redis.forced(),
    }
    if dataset is not None:
        forced["data_cfg.prepared_path"] = storage.to_uri(dataset["path"])
    if trains:  # a run()-only experiment resumes (or not) by itself
        forced["resume_from"] = "auto" if config.resume == "auto" else ""
    return forced
