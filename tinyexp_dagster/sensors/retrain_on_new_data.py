"""`retrain_on_new_data_sensor`: a new `prepared_dataset` data version -> `retrain_job`."""

import dagster as dg

from ..jobs import retrain_job, training_pipeline
from .common import PREPARED_DATASET, TRAINED_MODEL

DATA_VERSION_TAG = "dagster/data_version"  # where Dagster records an Output's DataVersion
# Dagster tags each materialization with the data versions of the inputs it was computed from.
TRAINED_ON_TAG = f"dagster/input_data_version/{PREPARED_DATASET.to_user_string()}"
_TRAINING_JOBS = (training_pipeline.name, retrain_job.name)


@dg.asset_sensor(
    asset_key=PREPARED_DATASET,
    name="retrain_on_new_data_sensor",
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests retrain_job once for each new prepared_dataset data version.",
)
def retrain_on_new_data_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """A `prepared_dataset` materialization with a data version other than the previously
    handled one requests `retrain_job` (run key `data:<version>`: once per version), unless
    `trained_model` was already trained on it or the run that prepared it trains on it too
    (`training_pipeline`). Dagster's asset-sensor cursor (the storage id of the last
    materialization handled) hands each materialization over once."""
    instance = context.instance
    version = data_version(asset_event.asset_materialization)
    reason = None
    if version is None:
        reason = f"prepared_dataset materialization of {_source(asset_event)} has no data version"
    elif version == _handled_version(instance, context.cursor):
        reason = f"prepared_dataset rematerialized with the same data version {version}"
    elif _trained_on(instance) == version:
        reason = f"trained_model is already trained on data version {version}"
    elif _run_trains(instance, asset_event.run_id):
        reason = f"data version {version} came from run {asset_event.run_id}, which trains on it"
    if reason is not None:
        return dg.SkipReason(reason)
    context.log.info(f"new prepared_dataset data version {version}: requesting retrain_job")
    return dg.RunRequest(run_key=f"data:{version}", tags={"tinyexp/data_version": version})


def data_version(materialization: dg.AssetMaterialization | None) -> str | None:
    """The materialization's DataVersion, else its `data_version` metadata."""
    if materialization is None:
        return None
    version = (materialization.tags or {}).get(DATA_VERSION_TAG)
    if version:
        return version
    value = materialization.metadata.get("data_version")
    return str(value.value) if value is not None else None


def _source(event: dg.EventLogEntry) -> str:
    return f"run {event.run_id}" if event.run_id else "an external report"


def _handled_version(instance: dg.DagsterInstance, cursor: str | None) -> str | None:
    """The data version of the materialization the cursor points at (the last one handled)."""
    if not cursor:
        return None
    records_filter = dg.AssetRecordsFilter(asset_key=PREPARED_DATASET, storage_ids=[int(cursor)])
    records = instance.fetch_materializations(records_filter, limit=1).records
    return data_version(records[0].asset_materialization) if records else None


def _trained_on(instance: dg.DagsterInstance) -> str | None:
    """The prepared_dataset data version of the latest trained_model materialization."""
    records = instance.fetch_materializations(TRAINED_MODEL, limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    return (records[0].asset_materialization.tags or {}).get(TRAINED_ON_TAG)


def _run_trains(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether the run `run_id` materializes trained_model too (so retraining is redundant)."""
    run = instance.get_run_by_id(run_id) if run_id else None
    if run is None:
        return False
    return run.job_name in _TRAINING_JOBS or TRAINED_MODEL in (run.asset_selection or ())
