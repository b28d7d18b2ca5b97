"""The Dagster side of sweeps (the core side, trials, pruning and the board, is
`tinyexp_core.sweep`): `definitions` (what a sweep adds to a pipeline: partitions, the pool
and its sensor, the leaderboard), `monitor` (a trial while it trains: its board row, pruning,
its metadata), `trials` (the terminal's `sweep` command: trials' state, training them
without the daemon, the leaderboard), `worker_pool` and `worker` (the trial workers that
command trains them in: long-lived processes, one trial after another)."""

from tinyexp_dagster.sweep.definitions import (
    BACKFILL_TAG,
    BATCH_TAG,
    COLUMNS,
    LEADERBOARD,
    board_key,
    build_sweep_leaderboard,
    build_sweep_pool_sensor,
    ensure_pool_limit,
    leaderboard_event,
    leaderboard_metadata,
    partitions_def,
    pool_limit,
    pool_name,
    sweep_scope,
    with_sweep,
)
from tinyexp_dagster.sweep.monitor import (
    POLL_S,
    SweepMonitor,
    pruned_output,
    sweep_monitor,
    trial_metadata,
)

__all__ = [
    "BACKFILL_TAG",
    "BATCH_TAG",
    "COLUMNS",
    "LEADERBOARD",
    "POLL_S",
    "SweepMonitor",
    "board_key",
    "build_sweep_leaderboard",
    "build_sweep_pool_sensor",
    "ensure_pool_limit",
    "leaderboard_event",
    "leaderboard_metadata",
    "partitions_def",
    "pool_limit",
    "pool_name",
    "pruned_output",
    "sweep_monitor",
    "sweep_scope",
    "trial_metadata",
    "with_sweep",
]
