"""What an orchestrator tells a run about itself: which asset, which attempt, which key.

A launcher (Ray, mp) or Dagster hands these to the rank processes in its environment; this
is the one place that reads them, so experiment code never touches `os.environ`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tinyexp_core.config.env import ENV_ASSET, ENV_ATTEMPT, ENV_PROGRESS_RUN_ID

__all__ = ["RunContext"]


@dataclass(frozen=True)
class RunContext:
    """The orchestrator's view of this run: empty/1 when run from a terminal."""

    asset: str = ""  # the Dagster asset key being materialized, e.g. `mnist/trained_model`
    attempt: int = 1  # the orchestrator's attempt number (1-based)
    progress_run_id: str = ""  # the progress key's run id (Dagster's), "" = the run's own id

    @classmethod
    def from_env(cls) -> RunContext:
        """The context the launcher put in this process's environment."""
        attempt = os.environ.get(ENV_ATTEMPT, "1")
        return cls(
            asset=os.environ.get(ENV_ASSET, ""),
            attempt=int(attempt) if attempt.isdigit() else 1,
            progress_run_id=os.environ.get(ENV_PROGRESS_RUN_ID, ""),
        )
