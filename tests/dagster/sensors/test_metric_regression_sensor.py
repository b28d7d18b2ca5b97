"""mnist_metric_regression_sensor (and a min metric's tabular one) against a real Dagster
instance: one retrain per evaluation that fails the threshold, no retrain loop."""

import dagster as dg

from tests.dagster.sensors.support import NO_NEW, tick
from tinyexp_dagster.definitions import defs
from tinyexp_dagster.sensors import evaluation_key

metric_regression_sensor = defs.resolve_sensor_def("mnist_metric_regression_sensor")
EVALUATION = dg.AssetKey(["mnist", "model_evaluation"])


def evaluation(instance: dg.DagsterInstance, accuracy: float | None) -> int:
    metadata = {"split": "test"} if accuracy is None else {"accuracy": accuracy, "split": "test"}
    instance.report_runless_asset_event(dg.AssetMaterialization(EVALUATION, metadata=metadata))
    return instance.fetch_materializations(EVALUATION, limit=1).records[0].storage_id


def key_of(instance: dg.DagsterInstance, storage_id: int) -> str:
    """The sensor's name for the evaluation stored under `storage_id`."""
    records_filter = dg.AssetRecordsFilter(asset_key=EVALUATION, storage_ids=[storage_id])
    [record] = instance.fetch_materializations(records_filter, limit=1).records
    return evaluation_key(record.event_log_entry)


def test_metric_regression_requests_once_per_evaluation(instance):
    """The mnist pipeline's threshold (defs.yaml): accuracy >= 0.9."""
    assert tick(metric_regression_sensor, instance).skip_message == (
        NO_NEW.format("model_evaluation")
    )
    good = evaluation(instance, 0.95)
    data = tick(metric_regression_sensor, instance)
    assert data.skip_message == "accuracy 0.9500 >= threshold 0.9000"
    assert data.cursor == str(good)

    bad = evaluation(instance, 0.5)
    first = tick(metric_regression_sensor, instance, data.cursor)
    assert [r.run_key for r in first.run_requests] == [f"metric:{key_of(instance, bad)}"]
    assert first.cursor == str(bad)
    second = tick(metric_regression_sensor, instance, first.cursor)
    assert not second.run_requests
    assert second.skip_message == NO_NEW.format("model_evaluation")
    assert second.cursor == first.cursor

    missing = evaluation(instance, None)
    third = tick(metric_regression_sensor, instance, second.cursor)
    assert third.skip_message == (
        f"mnist/model_evaluation {key_of(instance, missing)} has no accuracy metadata"
    )


def test_no_retrain_loop_after_a_retrain_this_sensor_requested(instance):
    @dg.asset(key=EVALUATION)
    def stub_evaluation() -> dg.Output[dict]:
        return dg.Output({}, metadata={"accuracy": 0.5})

    result = dg.materialize(
        [stub_evaluation],
        instance=instance,
        tags={"dagster/sensor_name": "mnist_metric_regression_sensor"},
    )
    data = tick(metric_regression_sensor, instance)
    assert not data.run_requests
    assert data.skip_message == (
        f"accuracy 0.5000 fails threshold 0.9000 after the retrain this sensor requested "
        f"(run {result.run_id}); not retraining again"
    )


def test_lower_is_better_for_a_min_metric(instance):
    """A regressor's rmse: above the threshold is the regression."""
    from tinyexp_dagster import pipeline_defs

    tabular = pipeline_defs(
        "tabular", "tinyexp_core.examples.tabular_exp:Exp", metric_threshold=60.0
    )
    [sensor] = [s for s in tabular.sensors if s.name == "tabular_metric_regression_sensor"]
    key = dg.AssetKey(["tabular", "model_evaluation"])
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={"rmse": 50.0}))
    good = tick(sensor, instance)
    assert good.skip_message == "rmse 50.0000 <= threshold 60.0000"
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={"rmse": 70.0}))
    bad = tick(sensor, instance, good.cursor)
    [request] = bad.run_requests
    assert request.tags["tinyexp/rmse"] == "70.0000"
    assert sensor.job_name == "tabular_retrain_job"
