"""`accuracy_regression_sensor`: a `model_evaluation` below the minimum accuracy ->
`retrain_job`."""

import dagster as dg

from tinyexp_core.progress import parse_number

from ..jobs import retrain_job
from .common import MODEL_EVALUATION, min_accuracy

SENSOR_NAME_TAG = "dagster/sensor_name"  # set by the daemon on runs a sensor requested
NAME = "accuracy_regression_sensor"


@dg.asset_sensor(
    asset_key=MODEL_EVALUATION,
    name=NAME,
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests retrain_job when the latest evaluation is below the minimum accuracy.",
)
def accuracy_regression_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """The latest `model_evaluation` with `accuracy` below `TINYEXP_MIN_ACCURACY` requests
    `retrain_job` once (run key `acc:<evaluation_key>`). An evaluation produced by a retrain
    this sensor requested does not request another one: that would retrain forever. Dagster's
    asset-sensor cursor (the storage id of the last evaluation handled) hands each evaluation
    over once."""
    threshold = min_accuracy()
    materialization = asset_event.asset_materialization
    entry = materialization.metadata.get("accuracy") if materialization is not None else None
    accuracy = parse_number(str(entry.value)) if entry is not None else None
    run = context.instance.get_run_by_id(asset_event.run_id) if asset_event.run_id else None
    reason = None
    if accuracy is None:
        reason = f"model_evaluation {evaluation_key(asset_event)} has no accuracy metadata"
    elif accuracy >= threshold:
        reason = f"accuracy {accuracy:.4f} >= minimum {threshold:.4f}"
    elif run is not None and run.tags.get(SENSOR_NAME_TAG) == NAME:
        reason = (
            f"accuracy {accuracy:.4f} < minimum {threshold:.4f} after the retrain this sensor "
            f"requested (run {run.run_id}); not retraining again"
        )
    if reason is not None:
        return dg.SkipReason(reason)
    context.log.warning(f"accuracy {accuracy:.4f} < minimum {threshold:.4f}: retraining")
    return dg.RunRequest(
        run_key=f"acc:{evaluation_key(asset_event)}", tags={"tinyexp/accuracy": f"{accuracy:.4f}"}
    )


def evaluation_key(event: dg.EventLogEntry) -> str:
    """Names one evaluation: its run (or `runless`) and the event's time, to the microsecond."""
    return f"{event.run_id or 'runless'}:{event.timestamp:.6f}"
