"""`<name>_metric_regression_sensor`: a `<name>/model_evaluation` whose primary metric is
worse than the pipeline's threshold -> `<name>_retrain_job`."""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from tinyexp_core.progress import parse_number

SENSOR_NAME_TAG = "dagster/sensor_name"  # set by the daemon on runs a sensor requested


def build_metric_regression_sensor(
    name: str, metric, threshold: float, retrain_job: UnresolvedAssetJobDefinition
) -> dg.SensorDefinition:
    """The pipeline `name`'s regression sensor: `metric` (its PrimaryMetric) compared with
    `threshold` in the metric's direction (>= for max, <= for min)."""
    evaluation = dg.AssetKey([name, "model_evaluation"])
    sensor_name = f"{name}_metric_regression_sensor"
    bound = ">=" if metric.direction == "max" else "<="

    @dg.asset_sensor(
        asset_key=evaluation,
        name=sensor_name,
        job=retrain_job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Requests {retrain_job.name} when the latest evaluation's {metric.name} "
        f"is not {bound} {threshold:g}.",
    )
    def metric_regression_sensor(
        context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry
    ):
        """The latest evaluation failing the threshold requests retrain_job once (run key
        `metric:<evaluation_key>`). An evaluation produced by a retrain this sensor requested
        does not request another one: that would retrain forever. Starts STOPPED: retraining
        an unchanged config on unchanged data rarely helps, so it is a deliberate choice."""
        materialization = asset_event.asset_materialization
        entry = materialization.metadata.get(metric.name) if materialization is not None else None
        value = parse_number(str(entry.value)) if entry is not None else None
        run = context.instance.get_run_by_id(asset_event.run_id) if asset_event.run_id else None
        reason = None
        if value is None:
            where = f"{evaluation.to_user_string()} {evaluation_key(asset_event)}"
            reason = f"{where} has no {metric.name} metadata"
        elif metric.passes(value, threshold):
            reason = f"{metric.name} {value:.4f} {bound} threshold {threshold:.4f}"
        elif run is not None and run.tags.get(SENSOR_NAME_TAG) == sensor_name:
            reason = (
                f"{metric.name} {value:.4f} fails threshold {threshold:.4f} after the retrain "
                f"this sensor requested (run {run.run_id}); not retraining again"
            )
        if reason is not None:
            return dg.SkipReason(reason)
        context.log.warning(f"{metric.name} {value:.4f} not {bound} {threshold:.4f}: retraining")
        return dg.RunRequest(
            run_key=f"metric:{evaluation_key(asset_event)}",
            tags={f"tinyexp/{metric.name}": f"{value:.4f}"},
        )

    return metric_regression_sensor


def evaluation_key(event: dg.EventLogEntry) -> str:
    """Names one evaluation: its run (or `runless`) and the event's time, to the microsecond."""
    return f"{event.run_id or 'runless'}:{event.timestamp:.6f}"
