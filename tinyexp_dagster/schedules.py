"""`nightly_retrain_schedule`: retrain on a clock.

Cron and timezone come from the environment when the definitions load:
`TINYEXP_RETRAIN_CRON` (default `0 2 * * *`) and `TINYEXP_RETRAIN_TIMEZONE` (default `UTC`,
an IANA name such as `Europe/Paris`). The schedule starts STOPPED: training every night is
a cost a deployment opts into (turn it on in the UI, or with `dagster schedule start`).
"""

import os

import dagster as dg

from tinyexp_core.exceptions import ConfigValueError

from .jobs import retrain_job

ENV_RETRAIN_CRON = "TINYEXP_RETRAIN_CRON"
DEFAULT_RETRAIN_CRON = "0 2 * * *"
ENV_RETRAIN_TIMEZONE = "TINYEXP_RETRAIN_TIMEZONE"
DEFAULT_RETRAIN_TIMEZONE = "UTC"


def build_nightly_retrain_schedule(
    cron: str = DEFAULT_RETRAIN_CRON, timezone: str = DEFAULT_RETRAIN_TIMEZONE
) -> dg.ScheduleDefinition:
    """The retrain schedule for `cron` in `timezone`; a bad value raises ConfigValueError
    naming the environment variable it comes from."""
    _check_timezone(timezone)
    try:
        return dg.ScheduleDefinition(
            name="nightly_retrain_schedule",
            cron_schedule=cron,
            execution_timezone=timezone,
            job=retrain_job,
            default_status=dg.DefaultScheduleStatus.STOPPED,
            tags={"tinyexp/trigger": "schedule"},
            description=f"Retrain, promote and evaluate on the cron `{cron}` ({timezone}).",
        )
    except dg.DagsterInvalidDefinitionError:
        raise ConfigValueError(
            ENV_RETRAIN_CRON, cron, "a 5-field cron expression, e.g. '0 2 * * *'"
        ) from None


def _check_timezone(timezone: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigValueError(
            ENV_RETRAIN_TIMEZONE, timezone, "an IANA time zone name, e.g. 'UTC', 'Europe/Paris'"
        ) from None


nightly_retrain_schedule = build_nightly_retrain_schedule(
    os.environ.get(ENV_RETRAIN_CRON) or DEFAULT_RETRAIN_CRON,
    os.environ.get(ENV_RETRAIN_TIMEZONE) or DEFAULT_RETRAIN_TIMEZONE,
)

SCHEDULES = [nightly_retrain_schedule]
