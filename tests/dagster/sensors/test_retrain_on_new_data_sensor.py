"""mnist_retrain_on_new_data_sensor against a real Dagster instance: one retrain per new
data version, none for data a training run prepared or another pipeline's data."""

import logging

import dagster as dg
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData

from tests.dagster.sensors.support import NO_NEW, dagster_run, tick
from tinyexp_dagster.definitions import defs

retrain_on_new_data_sensor = defs.resolve_sensor_def("mnist_retrain_on_new_data_sensor")
PREPARED = dg.AssetKey(["mnist", "prepared_dataset"])
TRAINED = dg.AssetKey(["mnist", "trained_model"])


def prepared(instance: dg.DagsterInstance, version: str) -> None:
    """A prepared_dataset materialization as the asset records it (DataVersion + metadata)."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            PREPARED,
            metadata={"data_version": version},
            tags={"dagster/data_version": version},
        )
    )


def latest_storage_id(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    return instance.fetch_materializations(key, limit=1).records[0].storage_id


def test_retrain_once_per_new_data_version(instance):
    data = tick(retrain_on_new_data_sensor, instance)
    assert data.skip_message == NO_NEW.format("prepared_dataset")

    requests = []
    prepared(instance, "v1")
    first = tick(retrain_on_new_data_sensor, instance)
    requests += first.run_requests
    assert [r.run_key for r in first.run_requests] == ["data:v1"]
    assert first.cursor == str(latest_storage_id(instance, PREPARED))

    # Dagster's asset-sensor cursor: nothing new, so the tick skips and keeps it.
    second = tick(retrain_on_new_data_sensor, instance, first.cursor)
    requests += second.run_requests
    assert second.skip_message == NO_NEW.format("prepared_dataset")
    assert second.cursor == first.cursor

    prepared(instance, "v1")  # the same data, prepared again
    third = tick(retrain_on_new_data_sensor, instance, second.cursor)
    requests += third.run_requests
    assert third.skip_message == "mnist/prepared_dataset rematerialized with the same version v1"
    assert int(third.cursor) > int(second.cursor)

    prepared(instance, "v2")
    fourth = tick(retrain_on_new_data_sensor, instance, third.cursor)
    requests += fourth.run_requests
    assert [r.run_key for r in requests] == ["data:v1", "data:v2"]
    assert fourth.run_requests[0].tags["tinyexp/data_version"] == "v2"
    assert retrain_on_new_data_sensor.job_name == "mnist_retrain_job"


def test_no_retrain_for_data_a_training_run_prepared(instance, pipeline_job):
    """mnist_training_pipeline prepares and trains in one run: its new data version is
    trained on already (or about to be), both mid-run and after trained_model exists."""
    run = dagster_run(instance, pipeline_job)
    materialization = dg.AssetMaterialization(
        PREPARED, metadata={"data_version": "v3"}, tags={"dagster/data_version": "v3"}
    )
    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name=run.job_name,
        event_specific_data=StepMaterializationData(materialization),
    )
    instance.report_dagster_event(event, run_id=run.run_id, log_level=logging.INFO)
    data = tick(retrain_on_new_data_sensor, instance)
    assert not data.run_requests
    assert data.skip_message == f"data version v3 came from run {run.run_id}, which trains"

    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            TRAINED, tags={"dagster/input_data_version/mnist/prepared_dataset": "v4"}
        )
    )
    prepared(instance, "v4")
    data = tick(retrain_on_new_data_sensor, instance, data.cursor)
    assert data.skip_message == "mnist/trained_model is already trained on data version v4"


def test_another_pipelines_data_does_not_trigger_this_one(instance):
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            dg.AssetKey(["tabular", "prepared_dataset"]),
            tags={"dagster/data_version": "t1"},
        )
    )
    data = tick(retrain_on_new_data_sensor, instance)
    assert not data.run_requests
    assert data.skip_message == NO_NEW.format("prepared_dataset")
