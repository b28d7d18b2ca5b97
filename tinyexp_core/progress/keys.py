"""The progress contract's names: the Redis keys, statuses, event types and TTLs."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

from redis.client import Pipeline

RUN_KEY_PREFIX = "tinyexp:run:"
EVENTS_STREAM = "tinyexp:events"
ACTIVE_RUNS_KEY = "tinyexp:runs:active"
STATUSES = ("starting", "running", "succeeded", "failed", "cancelled", "stalled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
EVENT_TYPES = ("epoch_end", "checkpoint", "finished", "failed")
DEFAULT_TTL_S = 7 * 24 * 3600
ERROR_MAX_CHARS = 4000  # the error field is a summary; the full traceback lives in the run log
_EVENT_FIELDS = ("event", "run_id", "epoch", "loss")
# The fields of a run's hash (`tinyexp:run:<run_id>`), the one list: the reporter writes the
# trainer's, `mark_status` status and error, `write_run_sweep` the sweep board's key of a
# sweep trial (`sweep`, read by the progress sensor to refresh the sweep's leaderboard).
RUN_FIELDS = (
    "status",
    "asset",
    "epoch",
    "num_epochs",
    "step",
    "num_steps",
    "loss",
    "lr",
    "samples_per_s",
    "eta_s",
    "heartbeat",
    "last_checkpoint",
    "best_metric",
    "attempt",
    "world_size",
    "error",
    "sweep",
)


def run_key(run_id: str) -> str:
    """Redis key of one run's progress hash."""
    return f"{RUN_KEY_PREFIX}{run_id}"


def ranks_key(run_id: str) -> str:
    """Redis hash of a run's rank processes (rank -> JSON: host, pid; `progress.stacks`)."""
    return f"{run_key(run_id)}:ranks"


def stacks_key(run_id: str) -> str:
    """Redis string with a run's last stack record (JSON), written by the stall sensor."""
    return f"{run_key(run_id)}:stacks"


def _expire_run(pipe: Pipeline, run_id: str, ttl_s: int) -> None:
    """Give a finished run's keys (hash, rank registrations, stacks) one TTL."""
    for key in (run_key(run_id), ranks_key(run_id), stacks_key(run_id)):
        pipe.expire(key, ttl_s)


def new_run_id() -> str:
    """A run id for standalone (non-Dagster) runs: `cli-<utc timestamp>-<6 hex>`."""
    return f"cli-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
