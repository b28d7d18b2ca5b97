"""`pipeline_defs()`: one experiment -> its prefixed assets, checks, jobs and triggers.

`<name>/prepared_dataset -> <name>/trained_model -> <name>/model_checkpoint ->
<name>/model_evaluation`. What a pipeline holds follows what the experiment class
implements (a method counts when the subclass overrides TinyExp's):

- `prepare_data` -> `<name>/prepared_dataset` + `dataset_sanity` and
  `<name>_retrain_on_new_data_sensor`; without it the experiment reads its own data;
- `train` (returns TrainResult) -> `<name>/trained_model`, `<name>/model_checkpoint` +
  `checkpoint_integrity` and the blocking `champion_gate` (moves the `champion` alias);
- `evaluate` (returns EvalResult) -> `<name>/model_evaluation`, `<name>_evaluate_job`; with
  `metric_threshold`, the `minimum_metric` check and `<name>_metric_regression_sensor`;
- only `run()` (TinyExp 0.0.1), or a `train()` without `primary_metric` -> one
  `<name>/trained_model` that runs `run()` on the Ray ranks, streams rank 0's log into the
  step log and records the output directory and `run()`'s return value.

Always: `<name>_training_pipeline`, `<name>_retrain_job`, `<name>_retrain_schedule` (STOPPED)
and the shared `training_progress_sensor` / `stalled_training_sensor`.

Composition: the shared sensors are module-level objects that every pipeline's Definitions
lists; Dagster keeps one definition per name when they are the same object, and a component's
metadata rewrite returns them unchanged (`sensors.common.SharedSensorDefinition`), so they
are defined once however many pipelines merge: `defs/` folders, `pipeline_defs` calls, or
both in `dg.Definitions.merge`. Two pipelines of one name in a code location fail at load
with one line naming both declarations (`declarations`). Resources are not part of a
pipeline: a code location adds `tinyexp_dagster.default_resources()` once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_dagster.assets import (
    PipelineSpec,
    build_champion_gate,
    build_checkpoint_integrity,
    build_dataset_sanity,
    build_model_checkpoint,
    build_model_evaluation,
    build_prepared_dataset,
    build_trained_model,
)
from tinyexp_dagster.dagster_warnings import partitioned_checks
from tinyexp_dagster.declarations import declare
from tinyexp_dagster.jobs import build_jobs
from tinyexp_dagster.schedules import (
    DEFAULT_RETRAIN_CRON,
    DEFAULT_RETRAIN_TIMEZONE,
    build_retrain_schedule,
)
from tinyexp_dagster.sensors import (
    SHARED_SENSORS,
    build_metric_regression_sensor,
    build_retrain_on_new_data_sensor,
)
from tinyexp_dagster.sweep import build_sweep_leaderboard, build_sweep_pool_sensor, with_sweep

__all__ = ["pipeline_defs"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def pipeline_defs(
    name: str,
    experiment: str | type,
    overrides: Sequence[str] = (),
    *,
    metric_threshold: float | None = None,
    retrain_threshold: float | None = None,
    retrain_cron: str = DEFAULT_RETRAIN_CRON,
    retrain_timezone: str = DEFAULT_RETRAIN_TIMEZONE,
    champion_tolerance: float = 0.0,
    sweep: Mapping[str, Any] | None = None,
    max_concurrent: int | None = None,
    early_stopping: Mapping[str, Any] | None = None,
) -> dg.Definitions:
    """The Definitions of one experiment's pipeline, every name prefixed by `name`.
    - `experiment`: the TinyExp subclass or `package.module:Class` (imported now: keep its
      module-level imports light).
    - `overrides`: the pipeline's own `key=value` overrides, before a run's `exp` and its own.
    - `metric_threshold`: in the experiment's primary metric, compared in its direction
      (`accuracy` >= 0.9, `rmse` <= 60): the blocking `minimum_metric` check's default and
      the regression sensor's threshold. None: neither exists.
    - `retrain_threshold`: the regression sensor's own threshold, when retraining should
      start before the check fails (retrain below 0.95, gate at 0.9). None: `metric_threshold`.
    - `retrain_cron`, `retrain_timezone`: `<name>_retrain_schedule` (created STOPPED);
      `champion_tolerance` (>= 0, the metric's units): how much worse than the champion a
      new version may be on the validation split and still become champion.
    - `sweep`: a grid (`{"optimizer_cfg.lr": [0.001, 0.003]}`) or a random search
      (`{"random": {"params": ..., "num_trials": 8, "seed": 0}}`), see tinyexp_core.sweep:
      the training asset and its downstream assets get one partition per trial, and
      `<name>/sweep_leaderboard` ranks them. `max_concurrent`: trainings at once (the
      concurrency pool `tinyexp_<name>_sweep`, kept by `<name>_sweep_pool_sensor`; default:
      every trial). `early_stopping`: `{"warmup_epochs": E, "min_trials": 1}`, off by default.

    Raises ConfigValueError naming the argument when the experiment lacks what an option
    needs, a threshold can never be met, or a name is not a valid Dagster name."""
    spec = _spec(name, experiment, overrides)
    declare(name)  # a second pipeline of this name in the code location fails here
    has = {m: _implements(spec.exp_cls, m) for m in ("prepare_data", "train", "evaluate", "run")}
    # No primary metric: no TrainResult to promote or rank, so it runs like run()-only.
    has["train"] = has["train"] and spec.primary_metric is not None
    spec = with_sweep(spec, has, sweep, max_concurrent, early_stopping)
    _check_pieces(spec, has, "metric_threshold", metric_threshold)
    _check_pieces(spec, has, "retrain_threshold", retrain_threshold)
    tolerance = _check_tolerance(champion_tolerance)
    assets, checks = _assets_and_checks(spec, has, metric_threshold, tolerance)
    names = [a.key.path[-1] for a in assets]
    jobs = build_jobs(name, names, sweep=spec.sweep is not None)
    retrain_at = metric_threshold if retrain_threshold is None else retrain_threshold
    sensors, schedules = _triggers(spec, has, jobs, retrain_at, retrain_cron, retrain_timezone)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=list(jobs.values()),
        sensors=sensors,
        schedules=schedules,
        # Ad hoc materializations too (a sweep trial from the terminal, the UI's
        # "Materialize"): steps run in the run's process, as the jobs' do (jobs.py), instead
        # of paying a Python start and a definitions load per step.
        executor=dg.in_process_executor,
    )


def _assets_and_checks(
    spec: PipelineSpec, has: dict[str, bool], threshold: float | None, tolerance: float
) -> tuple[list[Any], list[Any]]:
    """What the experiment implements decides the assets and their checks."""
    assets, checks = [], []
    if has["prepare_data"]:
        assets.append(build_prepared_dataset(spec))
        checks.append(build_dataset_sanity(spec))
    assets.append(build_trained_model(spec, with_dataset=has["prepare_data"], trains=has["train"]))
    if has["train"]:
        assets.append(build_model_checkpoint(spec))
        with partitioned_checks():  # a sweep's checks have one partition per trial
            checks.append(build_checkpoint_integrity(spec))
            checks.append(build_champion_gate(spec, tolerance, evaluates=has["evaluate"]))
    if has["train"] and has["evaluate"]:
        assets.append(build_model_evaluation(spec, threshold))
    if spec.sweep is not None:
        assets.append(build_sweep_leaderboard(spec))
    return assets, checks


def _triggers(
    spec: PipelineSpec,
    has: dict[str, bool],
    jobs: dict[str, Any],
    retrain_at: float | None,
    cron: str,
    timezone: str,
) -> tuple[list[Any], list[Any]]:
    """The shared sensors plus this pipeline's retraining sensors and schedule."""
    sensors = list(SHARED_SENSORS)
    if spec.sweep is not None:
        # A sweep retrains by a backfill of its trials: the retraining triggers, which
        # request one unpartitioned run, are not built.
        sensors.append(build_sweep_pool_sensor(spec))
        return sensors, []
    name = spec.name
    if has["prepare_data"]:
        training = jobs["training"].name
        sensors.append(build_retrain_on_new_data_sensor(name, jobs["retrain"], training))
    if retrain_at is not None:
        metric = spec.primary_metric
        sensors.append(build_metric_regression_sensor(name, metric, retrain_at, jobs["retrain"]))
    return sensors, [build_retrain_schedule(name, jobs["retrain"], cron, timezone)]


def valid_name(name: object) -> bool:
    """Whether `name` can name a pipeline (and so its assets, jobs and triggers)."""
    return isinstance(name, str) and _NAME.match(name) is not None


def _spec(name: str, experiment: str | type, overrides: Sequence[str]) -> PipelineSpec:
    from tinyexp_core.config.factory import build_exp, load_exp_class

    if not valid_name(name):
        raise ConfigValueError("name", name, "letters, digits and _, starting with a letter")
    if isinstance(overrides, str):
        raise ConfigValueError("overrides", overrides, "a list of key=value strings")
    if isinstance(experiment, str):
        exp_cls, path = load_exp_class(experiment), experiment
    else:
        exp_cls, path = experiment, f"{experiment.__module__}:{experiment.__qualname__}"
    defaults = build_exp(exp_cls, list(overrides)) if overrides else exp_cls()
    return PipelineSpec(
        name=name,
        experiment=path,
        exp_cls=exp_cls,
        overrides=tuple(overrides),
        defaults=defaults,
    )


def _check_tolerance(tolerance: float) -> float:
    import math

    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise ConfigValueError("champion_tolerance", tolerance, "a number >= 0")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ConfigValueError("champion_tolerance", tolerance, "a finite number >= 0")
    return float(tolerance)


def _implements(exp_cls: type, method: str) -> bool:
    """Whether the experiment class overrides the TinyExp base's `method`."""
    from tinyexp_core.config.experiment import TinyExp

    return getattr(exp_cls, method, None) is not getattr(TinyExp, method, None)


def _check_pieces(
    spec: PipelineSpec, has: dict[str, bool], option: str, threshold: float | None
) -> None:
    """One line naming what is missing, at definition time (before any run touches Ray)."""
    what = f"{spec.experiment}"
    if not (has["train"] or has["run"] or _implements(spec.exp_cls, "train")):
        allowed = "a TinyExp subclass implementing train() or run()"
        raise ConfigValueError("experiment", what, allowed)
    if threshold is not None and not (has["train"] and has["evaluate"]):
        allowed = f"none: {what} has no primary_metric, train() and evaluate() to check"
        raise ConfigValueError(option, threshold, allowed)
    if threshold is not None:
        spec.primary_metric.check_threshold(option, threshold)
