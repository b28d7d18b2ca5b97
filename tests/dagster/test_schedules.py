"""`<name>_retrain_schedule` and the wiring of sensors and schedules into `defs`."""

from datetime import datetime, timezone

import dagster as dg
import pytest

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_dagster import default_resources, pipeline_defs
from tinyexp_dagster.definitions import defs

SENSORS = {
    "training_progress_sensor": dg.DefaultSensorStatus.RUNNING,
    "stalled_training_sensor": dg.DefaultSensorStatus.RUNNING,
    "mnist_retrain_on_new_data_sensor": dg.DefaultSensorStatus.RUNNING,
    "mnist_metric_regression_sensor": dg.DefaultSensorStatus.STOPPED,
}
TABULAR = "tinyexp_core.examples.tabular_exp:Exp"


def test_defaults_retrain_nightly_at_two_utc_and_start_stopped():
    schedule = defs.resolve_schedule_def("mnist_retrain_schedule")
    assert schedule.job_name == "mnist_retrain_job"
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * *", "UTC")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 1, 2, 2, 0, tzinfo=timezone.utc)
    )
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.tags["tinyexp/trigger"] == "schedule"


def test_cron_and_timezone_are_pipeline_options():
    pipeline = pipeline_defs(
        "tabular", TABULAR, retrain_cron="30 4 * * 1-5", retrain_timezone="Europe/Paris"
    )
    [schedule] = pipeline.schedules
    assert schedule.name == "tabular_retrain_schedule"
    assert (schedule.cron_schedule, schedule.execution_timezone) == (
        "30 4 * * 1-5",
        "Europe/Paris",
    )


@pytest.mark.parametrize(
    ("cron", "tz", "option"),
    [("every night", "UTC", "retrain_cron"), ("0 2 * * *", "Mars/Olympus", "retrain_timezone")],
)
def test_bad_cron_or_timezone_names_the_option(cron, tz, option):
    with pytest.raises(ConfigValueError, match=option):
        pipeline_defs("tabular", TABULAR, retrain_cron=cron, retrain_timezone=tz)


def test_a_threshold_needs_an_evaluation():
    from tinyexp_core.examples.pi_exp import Exp as PiExp  # train() without a primary metric

    with pytest.raises(ConfigValueError, match="metric_threshold"):
        pipeline_defs("pi", PiExp, metric_threshold=3.14)
    pipeline = pipeline_defs("pi", PiExp)  # one training asset that records run()'s value
    assert [a.key.to_user_string() for a in pipeline.assets] == ["pi/trained_model"]
    assert {j.name for j in pipeline.jobs} == {"pi_training_pipeline", "pi_retrain_job"}


def test_definitions_hold_the_sensors_and_the_schedule():
    dg.Definitions.validate_loadable(defs)
    for name, status in SENSORS.items():
        sensor = defs.resolve_sensor_def(name)
        assert sensor.default_status == status, name
        assert 10 <= sensor.minimum_interval_seconds <= 30, name
        assert sensor.description, name
    for name in ("mnist_retrain_on_new_data_sensor", "mnist_metric_regression_sensor"):
        assert defs.resolve_sensor_def(name).job_name == "mnist_retrain_job"


def test_shared_sensors_are_included_once_when_pipelines_merge():
    merged = dg.Definitions.merge(
        pipeline_defs("a", TABULAR, metric_threshold=60.0),
        pipeline_defs("b", TABULAR, metric_threshold=50.0),
        dg.Definitions(resources=default_resources()),
    )
    dg.Definitions.validate_loadable(merged)
    names = [s.name for s in merged.get_repository_def().sensor_defs]
    assert sorted(names) == sorted(
        [
            "training_progress_sensor",
            "stalled_training_sensor",
            "a_retrain_on_new_data_sensor",
            "a_metric_regression_sensor",
            "b_retrain_on_new_data_sensor",
            "b_metric_regression_sensor",
        ]
    )


def test_pipeline_overrides_are_the_launchpads_exp_defaults():
    """An untouched `exp` field keeps the pipeline's value; a changed one replaces it."""
    pipeline = pipeline_defs("tabular", TABULAR, ["train_cfg.num_epochs=5"])
    [trained] = [a for a in pipeline.assets if a.key.path[-1] == "trained_model"]
    config_cls = trained.op.config_schema.config_type  # the generated config shape
    exp_fields = config_cls.fields["exp"].config_type.fields
    train_cfg = exp_fields["train_cfg"].config_type.fields
    assert train_cfg["num_epochs"].default_value == 5

    from tinyexp_dagster.assets.common import PipelineSpec
    from tinyexp_dagster.pipeline import _spec

    spec: PipelineSpec = _spec("tabular", TABULAR, ["train_cfg.num_epochs=5"])
    untouched = {"train_cfg": {"num_epochs": 5}}
    assert spec.overrides_for(untouched, []) == ["train_cfg.num_epochs=5"]
    back_to_20 = {"train_cfg": {"num_epochs": 20}}
    assert spec.overrides_for(back_to_20, ["seed=1"]) == [
        "train_cfg.num_epochs=5",
        "train_cfg.num_epochs=20",
        "seed=1",
    ]
