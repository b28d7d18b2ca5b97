"""`<name>_retrain_schedule`: a pipeline's retraining on a clock (cron + IANA timezone).

It starts STOPPED: training every night is a cost a deployment opts into (turn it on in
the UI, or with `dagster schedule start`)."""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from tinyexp_core.config.exceptions import ConfigValueError

DEFAULT_RETRAIN_CRON = "0 2 * * *"
DEFAULT_RETRAIN_TIMEZONE = "UTC"


def build_retrain_schedule(
    name: str,
    job: UnresolvedAssetJobDefinition,
    cron: str = DEFAULT_RETRAIN_CRON,
    timezone: str = DEFAULT_RETRAIN_TIMEZONE,
) -> dg.ScheduleDefinition:
    """The pipeline `name`'s schedule for `cron` in `timezone`; a bad value raises
    ConfigValueError naming the option (`retrain_cron`, `retrain_timezone`)."""
    _check_timezone(timezone)
    try:
        return dg.ScheduleDefinition(
            name=f"{name}_retrain_schedule",
            cron_schedule=cron,
            execution_timezone=timezone,
            job=job,
            default_status=dg.DefaultScheduleStatus.STOPPED,
            tags={"tinyexp/trigger": "schedule"},
            description=f"Runs {job.name} on the cron `{cron}` ({timezone}).",
        )
    except dg.DagsterInvalidDefinitionError:
        raise ConfigValueError(
            "retrain_cron", cron, "a 5-field cron expression, e.g. '0 2 * * *'"
        ) from None


def _check_timezone(timezone: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigValueError(
            "retrain_timezone", timezone, "an IANA time zone name, e.g. 'UTC', 'Europe/Paris'"
        ) from None
