"""StallSettingsResource: when `stalled_training_sensor` calls a run stalled and what it does."""

from __future__ import annotations

import math
import os
from typing import Literal, get_args

import dagster as dg
from pydantic import Field, field_validator

StallAction = Literal["report", "terminate"]
STALL_ACTIONS = get_args(StallAction)
DEFAULT_STALL_AFTER_S = 600.0
ENV_STALL_AFTER_S = "TINYEXP_STALL_AFTER_S"
ENV_STALL_ACTION = "TINYEXP_STALL_ACTION"


class StallSettingsResource(dg.ConfigurableResource):
    """The stall sensor's settings, chosen once per deployment (`default_resources()` reads
    them from `TINYEXP_STALL_AFTER_S` / `TINYEXP_STALL_ACTION`)."""

    after_s: float = Field(
        default=DEFAULT_STALL_AFTER_S,
        description="Seconds without a heartbeat after which a running training is stalled.",
    )
    action: StallAction = Field(
        default="report",
        description="`report`: mark and log (every rank's stack recorded); `terminate`: also "
        "terminate the run and request a resume run from its last checkpoint.",
    )

    @field_validator("after_s")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not (value > 0 and math.isfinite(value)):
            from tinyexp_core.config.exceptions import ConfigValueError

            raise ConfigValueError("after_s", value, "a finite number of seconds > 0")
        return value

    @classmethod
    def from_env(cls) -> StallSettingsResource:
        """The settings from `TINYEXP_STALL_AFTER_S` and `TINYEXP_STALL_ACTION` (defaults:
        600 s, `report`); a bad value raises ConfigValueError naming the variable."""
        from tinyexp_core.config.exceptions import ConfigValueError

        text = os.environ.get(ENV_STALL_AFTER_S) or ""
        try:
            after_s = float(text) if text else DEFAULT_STALL_AFTER_S
        except ValueError:
            raise ConfigValueError(ENV_STALL_AFTER_S, text, "a number of seconds") from None
        if not (after_s > 0 and math.isfinite(after_s)):
            raise ConfigValueError(ENV_STALL_AFTER_S, after_s, "a finite number of seconds > 0")
        action = os.environ.get(ENV_STALL_ACTION) or "report"
        if action not in STALL_ACTIONS:
            raise ConfigValueError(ENV_STALL_ACTION, action, STALL_ACTIONS)
        return cls(after_s=after_s, action=action)
