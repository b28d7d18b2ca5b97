"""The daemon path: `dagster-daemon run` evaluates the sensors and launches `retrain_job`
when new data arrives and when accuracy falls below the minimum; the nightly schedule's
tick requests `retrain_job`.

The code location declares the product's two retrain sensors (evaluation function, asset,
target, default status, cursor) ticking every SENSOR_INTERVAL_S (5 s) instead of their 30 s,
and its instance drains the run queue every second (Dagster's default: 5 s) and evaluates
sensors in threads, as test_hang_diagnosis's `short` scale does: the scenario waits for
four sensor ticks, each up to an interval, and two queued runs."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import E2EDeployment
from tests.e2e.helpers import (
    ManagedProcess,
    daemon_cmd,
    dagster_cmd,
    run_cli,
    run_failure_report,
    wait_for,
)

pytestmark = pytest.mark.e2e

NEW_DATA_SENSOR = "mnist_retrain_on_new_data_sensor"
ACCURACY_SENSOR = "mnist_metric_regression_sensor"
# Also on by default while the scenario runs; their ticks must not fail either.
PROGRESS_SENSORS = ("training_progress_sensor", "stalled_training_sensor")
SENSOR_NAME_TAG = "dagster/sensor_name"
QUICK = {"ops": {"mnist__trained_model": {"config": {"overrides": ["train_cfg.num_epochs=1"]}}}}
NEW_DATA = {
    "ops": {"mnist__prepared_dataset": {"config": {"overrides": ["data_cfg.test_fraction=0.25"]}}}
}
# The deployment's code location: the project's mnist pipeline, except that every evaluation
# is a regression (accuracy 0.999 is out of reach) while the blocking checks pass.
LOCATION = """
import copy

import dagster as dg

from tinyexp_dagster import default_resources, pipeline_defs

FASTER = {faster}


def ticking_every(sensor, seconds):
    # The product's sensor, unchanged but for its minimum_interval_seconds (a private field
    # of Dagster's SensorDefinition: its public constructors would rebuild the asset sensor).
    faster = copy.copy(sensor)
    faster._min_interval = seconds
    assert faster.minimum_interval_seconds == seconds, faster.minimum_interval_seconds
    return faster


def build_defs(interval):
    pipeline = pipeline_defs(
        "mnist",
        "tinyexp_core.examples.mnist_exp:Exp",
        metric_threshold=0.0,
        retrain_threshold=0.999,
        champion_tolerance=1.0,  # each retrain becomes champion (the gate: test_champion.py)
    )
    sensors = [ticking_every(s, interval) if s.name in FASTER else s for s in pipeline.sensors]
    return dg.Definitions(
        assets=pipeline.assets,
        asset_checks=pipeline.asset_checks,
        jobs=pipeline.jobs,
        schedules=pipeline.schedules,
        sensors=sensors,
        resources=default_resources(),
    )


defs = build_defs({interval})
"""
SENSOR_INTERVAL_S = 5  # minimum_interval_seconds of both retrain sensors (product: 30)
TICK_TIMEOUT_S = 180  # a busy daemon (launching a run on a loaded box) ticks late
INSTANCE_YAML = (
    "run_coordinator:\n  module: dagster.core.run_coordinator\n"
    "  class: QueuedRunCoordinator\n  config:\n    dequeue_interval_seconds: 1\n"
    "sensors:\n  use_threads: true\n  num_workers: 4\n"
    "telemetry:\n  enabled: false\n"
)
RUN_TIMEOUT_S = 420  # one retrain_job (5 epochs, Ray start) on a loaded 2-core machine


def _ticks(instance, sensor: str) -> list:
    """Ticks of `sensor` recorded by the daemon, newest first."""
    from dagster._core.scheduler.instigation import InstigatorType

    ticks = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == sensor:
            ticks.extend(instance.get_ticks(state.instigator_origin_id, state.selector_id))
    return sorted(ticks, key=lambda t: t.timestamp, reverse=True)


def _describe_ticks(instance, sensor: str, limit: int = 5) -> str:
    lines = [f"last ticks of {sensor}:"]
    for tick in _ticks(instance, sensor)[:limit]:
        error = tick.error.message.strip() if tick.error else ""
        when = dt.datetime.fromtimestamp(tick.timestamp).strftime("%H:%M:%S")
        lines.append(f"  {when} {tick.status.value} runs={tick.run_ids} {tick.skip_reason or ''}")
        if error:
            lines.append(f"    error: {error}")
    return "\n".join(lines)


def _completed_tick_after(instance, sensor: str, after: float):
    """A completed tick of `sensor` that started after `after`; a failed tick fails."""
    for tick in _ticks(instance, sensor):
        if tick.timestamp <= after or not tick.is_completed:
            continue
        assert not tick.is_failure, _describe_ticks(instance, sensor)
        return tick
    return None


def _sensor_runs(instance, sensor: str) -> list:
    import dagster as dg

    return list(instance.get_runs(filters=dg.RunsFilter(tags={SENSOR_NAME_TAG: sensor})))


def _data_version(instance) -> str:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(["mnist", "prepared_dataset"]))
    return str(event.asset_materialization.metadata["data_version"].value)


class DaemonScenario:
    """A deployment with `dagster-daemon run`, and waits that explain themselves."""

    def __init__(self, deployment: E2EDeployment, instance, daemon: ManagedProcess):
        self.deployment = deployment
        self.instance = instance
        self.daemon = daemon

    def context(self) -> str:
        ticks = "\n".join(
            _describe_ticks(self.instance, s) for s in (NEW_DATA_SENSOR, ACCURACY_SENSOR)
        )
        return f"{ticks}\n{self.daemon.tail()}"

    def wait_tick(self, sensor: str, after: float, what: str):
        def tick():
            self.daemon.check_alive()
            return _completed_tick_after(self.instance, sensor, after)

        # The daemon may be busy launching a run: allow many intervals.
        return wait_for(tick, timeout_s=TICK_TIMEOUT_S, what=what, context=self.context)

    def wait_run_requested(self, sensor: str):
        def requested():
            self.daemon.check_alive()
            return _sensor_runs(self.instance, sensor)

        runs = wait_for(
            requested,
            timeout_s=TICK_TIMEOUT_S,
            what=f"{sensor} to launch a run",
            context=self.context,
        )
        assert len(runs) == 1, f"{sensor} launched {len(runs)} runs\n{self.context()}"
        return runs[0]

    def wait_success(self, run_id: str):
        import dagster as dg

        def finished():
            self.daemon.check_alive()
            run = self.instance.get_run_by_id(run_id)
            return run if run.is_finished else None

        run = wait_for(
            finished,
            timeout_s=RUN_TIMEOUT_S,
            interval_s=3,
            what=f"run {run_id} to finish",
            context=self.context,
        )
        assert run.status == dg.DagsterRunStatus.SUCCESS, (
            f"run {run_id} ({run.job_name}) ended {run.status.value}:\n"
            f"{run_failure_report(self.instance, run_id)}\n{self.daemon.tail()}"
        )
        return run

    def wait_all_runs_finished(self) -> None:
        def idle():
            return all(run.is_finished for run in self.instance.get_runs())

        wait_for(
            idle, timeout_s=RUN_TIMEOUT_S, what="launched runs to finish", context=self.context
        )


def _cli(deployment: E2EDeployment, name: str, command: str) -> None:
    """Run `dagster <command>` (split on spaces) to success; its output goes to logs/."""
    args = command.split()
    result = run_cli(dagster_cmd(*args), deployment.env, log_path=deployment.logs / f"{name}.log")
    assert result.returncode == 0, (
        f"`dagster {' '.join(args)}` exited {result.returncode}:\n{result.stdout[-6000:]}"
    )


@pytest.mark.timeout(1200)
def test_sensors_launch_one_retrain_each(deployment: E2EDeployment, tmp_path: Path) -> None:
    """(a) a new prepared_dataset data version -> one retrain_job; (b) an evaluation below
    the pipeline's retrain_threshold -> one retrain_job, and the evaluation of that retrain
    (still below) does not request another."""
    import dagster as dg

    quick = tmp_path / "quick.yaml"
    quick.write_text(yaml.safe_dump(QUICK))
    new_data = tmp_path / "new_data.yaml"
    new_data.write_text(yaml.safe_dump(NEW_DATA))
    location = tmp_path / "location.py"
    faster = repr({NEW_DATA_SENSOR, ACCURACY_SENSOR})
    location.write_text(
        LOCATION.replace("{faster}", faster).replace("{interval}", str(SENSOR_INTERVAL_S))
    )
    (deployment.home / "dagster.yaml").write_text(INSTANCE_YAML)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump({"load_from": [{"python_file": {"relative_path": location.name}}]})
    )
    # One worker keeps the retrains the sensors launch cheap.
    deployment.env.update({"TINYEXP_NUM_WORKERS": "1"})

    # The baseline: a model trained on the default data version, before the daemon runs.
    _cli(deployment, "baseline", f"job execute -f {location} -j mnist_training_pipeline -c {quick}")

    daemon_started = time.time()
    daemon = ManagedProcess(
        "dagster-daemon",
        daemon_cmd("run", "-w", str(workspace)),
        deployment.env,
        deployment.logs / "dagster-daemon.log",
    )
    try:
        with deployment.instance() as instance:
            scenario = DaemonScenario(deployment, instance, daemon)
            baseline_version = _data_version(instance)

            # Nothing new yet: the sensor ticks and skips.
            first = scenario.wait_tick(NEW_DATA_SENSOR, daemon_started, "a first sensor tick")
            assert first.status.value == "SKIPPED", scenario.context()
            assert _sensor_runs(instance, NEW_DATA_SENSOR) == []

            # (a) New data: test_fraction changes the split, so the data version.
            _cli(
                deployment,
                "new-data",
                f"asset materialize -f {location} --select mnist/prepared_dataset -c {new_data}",
            )
            new_version = _data_version(instance)
            assert new_version != baseline_version
            retrain_a = scenario.wait_run_requested(NEW_DATA_SENSOR)
            assert retrain_a.job_name == "mnist_retrain_job"
            scenario.wait_success(retrain_a.run_id)
            trained = instance.get_latest_materialization_event(
                dg.AssetKey(["mnist", "trained_model"])
            )
            assert trained.run_id == retrain_a.run_id
            assert (
                trained.asset_materialization.tags.get(
                    "dagster/input_data_version/mnist/prepared_dataset"
                )
                == new_version
            ), "the retrain did not train on the new data version"

            # (b) The accuracy sensor starts stopped; a user turns it on.
            _cli(deployment, "sensor-start", f"sensor start -w {workspace} {ACCURACY_SENSOR}")
            retrain_b = scenario.wait_run_requested(ACCURACY_SENSOR)
            assert retrain_b.job_name == "mnist_retrain_job"
            scenario.wait_success(retrain_b.run_id)

            # One request each: later ticks see nothing new, or the retrain's own result.
            after_b = instance.get_run_record_by_id(retrain_b.run_id).end_time or time.time()
            scenario.wait_tick(ACCURACY_SENSOR, after_b, "an accuracy tick after the retrain")
            scenario.wait_tick(NEW_DATA_SENSOR, after_b, "a new-data tick after the retrain")
            assert len(_sensor_runs(instance, ACCURACY_SENSOR)) == 1, scenario.context()
            assert len(_sensor_runs(instance, NEW_DATA_SENSOR)) == 1, scenario.context()
            for sensor in (NEW_DATA_SENSOR, ACCURACY_SENSOR, *PROGRESS_SENSORS):
                failed = [t for t in _ticks(instance, sensor) if t.is_failure]
                assert not failed, _describe_ticks(instance, sensor)
            scenario.wait_all_runs_finished()
    finally:
        stragglers = daemon.stop()
    assert not stragglers, f"processes outlived the daemon's shutdown: {stragglers}"


@pytest.mark.timeout(120)
def test_nightly_schedule_tick_requests_retrain(deployment: E2EDeployment) -> None:
    """The schedule evaluated for 02:00 UTC asks for one `retrain_job` run."""
    import dagster as dg

    from tinyexp_dagster.definitions import defs

    schedule = defs.resolve_schedule_def("mnist_retrain_schedule")
    assert schedule.job_name == "mnist_retrain_job"
    tick_time = dt.datetime(2026, 1, 15, 2, 0, tzinfo=dt.timezone.utc)
    with deployment.instance() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick_time)
        result = schedule.evaluate_tick(context)
    assert result.skip_message is None
    (request,) = result.run_requests
    assert request.job_name in (None, "mnist_retrain_job")
    assert request.tags.get("tinyexp/trigger") == "schedule"
