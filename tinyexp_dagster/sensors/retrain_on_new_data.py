"""`<name>_retrain_on_new_data_sensor`: a new `<name>/prepared_dataset` data version ->
`<name>_retrain_job`."""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

DATA_VERSION_TAG = "dagster/data_version"  # where Dagster records an Output's DataVersion


def build_retrain_on_new_data_sensor(
    name: str, retrain_job: UnresolvedAssetJobDefinition, training_job_name: str
) -> dg.SensorDefinition:
    """The pipeline `name`'s sensor: each new data version of its prepared_dataset requests
    its retrain_job once; other pipelines' datasets never trigger it."""
    dataset = dg.AssetKey([name, "prepared_dataset"])
    trained = dg.AssetKey([name, "trained_model"])
    # Dagster tags each materialization with the data versions of the inputs it was computed from.
    trained_on_tag = f"dagster/input_data_version/{dataset.to_user_string()}"
    training_jobs = (training_job_name, retrain_job.name)

    @dg.asset_sensor(
        asset_key=dataset,
        name=f"{name}_retrain_on_new_data_sensor",
        job=retrain_job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests {retrain_job.name} once for each new {dataset.to_user_string()} "
        "data version.",
    )
    def retrain_on_new_data_sensor(
        context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry
    ):
        """A prepared_dataset materialization with a data version other than the previously
        handled one requests retrain_job (run key `data:<version>`: once per version), unless
        trained_model was already trained on it or the run that prepared it trains on it too.
        Dagster's asset-sensor cursor hands each materialization over once."""
        instance = context.instance
        version = data_version(asset_event.asset_materialization)
        reason = None
        if version is None:
            reason = f"{dataset.to_user_string()} materialization has no data version"
        elif version == _handled_version(instance, dataset, context.cursor):
            reason = f"{dataset.to_user_string()} rematerialized with the same version {version}"
        elif _trained_on(instance, trained, trained_on_tag) == version:
            reason = f"{trained.to_user_string()} is already trained on data version {version}"
        elif _run_trains(instance, asset_event.run_id, trained, training_jobs):
            reason = f"data version {version} came from run {asset_event.run_id}, which trains"
        if reason is not None:
            return dg.SkipReason(reason)
        context.log.info(f"new {dataset.to_user_string()} version {version}: retraining")
        return dg.RunRequest(run_key=f"data:{version}", tags={"tinyexp/data_version": version})

    return retrain_on_new_data_sensor


def data_version(materialization: dg.AssetMaterialization | None) -> str | None:
    """The materialization's DataVersion, else its `data_version` metadata."""
    if materialization is None:
        return None
    version = (materialization.tags or {}).get(DATA_VERSION_TAG)
    if version:
        return version
    value = materialization.metadata.get("data_version")
    return str(value.value) if value is not None else None


def _handled_version(
    instance: dg.DagsterInstance, dataset: dg.AssetKey, cursor: str | None
) -> str | None:
    """The data version of the materialization the cursor points at (the last one handled)."""
    if not cursor:
        return None
    records_filter = dg.AssetRecordsFilter(asset_key=dataset, storage_ids=[int(cursor)])
    records = instance.fetch_materializations(records_filter, limit=1).records
    return data_version(records[0].asset_materialization) if records else None


def _trained_on(instance: dg.DagsterInstance, trained: dg.AssetKey, tag: str) -> str | None:
    """The prepared_dataset data version of the latest trained_model materialization."""
    records = instance.fetch_materializations(trained, limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    return (records[0].asset_materialization.tags or {}).get(tag)


def _run_trains(
    instance: dg.DagsterInstance, run_id: str, trained: dg.AssetKey, jobs: tuple[str, ...]
) -> bool:
    """Whether the run `run_id` materializes trained_model too (so retraining is redundant)."""
    run = instance.get_run_by_id(run_id) if run_id else None
    if run is None:
        return False
    return run.job_name in jobs or trained in (run.asset_selection or ())
