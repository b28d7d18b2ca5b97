"""`nightly_retrain_schedule` and the wiring of sensors and schedules into `defs`."""

import importlib
from collections.abc import Iterator
from datetime import datetime, timezone

import dagster as dg
import pytest

import tinyexp_dagster.schedules as schedules_module
from tinyexp_core.exceptions import ConfigValueError
from tinyexp_dagster.definitions import defs
from tinyexp_dagster.schedules import build_nightly_retrain_schedule, nightly_retrain_schedule

SENSORS = {
    "training_progress_sensor": dg.DefaultSensorStatus.RUNNING,
    "stalled_training_sensor": dg.DefaultSensorStatus.RUNNING,
    "retrain_on_new_data_sensor": dg.DefaultSensorStatus.RUNNING,
    "accuracy_regression_sensor": dg.DefaultSensorStatus.STOPPED,
}


@pytest.fixture
def reload_schedules(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Re-import the module under a patched environment; restore the default one after."""
    yield monkeypatch
    monkeypatch.undo()
    importlib.reload(schedules_module)


def test_defaults_retrain_nightly_at_two_utc_and_start_stopped():
    schedule = nightly_retrain_schedule
    assert schedule.name == "nightly_retrain_schedule"
    assert schedule.job_name == "retrain_job"
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * *", "UTC")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 1, 2, 2, 0, tzinfo=timezone.utc)
    )
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.tags["tinyexp/trigger"] == "schedule"


def test_cron_and_timezone_come_from_the_environment(reload_schedules):
    reload_schedules.setenv("TINYEXP_RETRAIN_CRON", "30 4 * * 1-5")
    reload_schedules.setenv("TINYEXP_RETRAIN_TIMEZONE", "Europe/Paris")
    schedule = importlib.reload(schedules_module).nightly_retrain_schedule
    assert (schedule.cron_schedule, schedule.execution_timezone) == (
        "30 4 * * 1-5",
        "Europe/Paris",
    )


@pytest.mark.parametrize(
    ("cron", "tz", "variable"),
    [
        ("every night", "UTC", "TINYEXP_RETRAIN_CRON"),
        ("0 2 * * *", "Mars/Olympus", "TINYEXP_RETRAIN_TIMEZONE"),
    ],
)
def test_bad_cron_or_timezone_names_the_variable(cron, tz, variable):
    with pytest.raises(ConfigValueError, match=variable):
        build_nightly_retrain_schedule(cron, tz)


def test_definitions_hold_the_sensors_and_the_schedule():
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_schedule_def("nightly_retrain_schedule").job_name == "retrain_job"
    for name, status in SENSORS.items():
        sensor = defs.resolve_sensor_def(name)
        assert sensor.default_status == status, name
        assert 10 <= sensor.minimum_interval_seconds <= 30, name
    for name in (
        "stalled_training_sensor",
        "retrain_on_new_data_sensor",
        "accuracy_regression_sensor",
    ):
        assert defs.resolve_sensor_def(name).job_name == "retrain_job"
