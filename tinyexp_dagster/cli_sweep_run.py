"""`tinyexp-dagster sweep NAME run|leaderboard`: train a sweep's trials without the daemon,
and rank them; what it prints. The work is in `tinyexp_dagster.sweep.trials` (see
cli_sweep.py for the whole command)."""

from __future__ import annotations

import signal
import sys
import uuid
from typing import TYPE_CHECKING, Any

from tinyexp_dagster.sweep.definitions import pool_limit, pool_name
from tinyexp_dagster.sweep.trials import (
    RUN_TAG,
    launch_all,
    leaderboard_table,
    materialize_in_process,
    materialized,
    ray_for,
)

if TYPE_CHECKING:
    from tinyexp_dagster.cli_location import Pipeline

__all__ = ["RUN_TAG", "print_leaderboard", "print_rows", "run_trials"]


def run_trials(instance: Any, pipeline: Pipeline, keys: list[str], root: str) -> int:
    """Train `keys` (in order, at most max_concurrent at once); 0 when all succeeded."""
    limit = pool_limit(instance, pipeline)
    print(f"{pipeline.name}: {len(keys)} trial(s), at most {limit} at once "
          f"(pool {pool_name(pipeline.name)})", flush=True)  # fmt: skip
    if "prepared_dataset" in pipeline.assets and not materialized(
        instance, pipeline, "prepared_dataset"
    ):
        print(f"{pipeline.name}/prepared_dataset: not materialized yet, preparing it", flush=True)
        if not materialize_in_process(instance, pipeline, "prepared_dataset").success:
            print(f"error: {pipeline.name}/prepared_dataset failed", file=sys.stderr)
            return 1
    batch = uuid.uuid4().hex[:12]
    # Ctrl-C stops the trials even where SIGINT came ignored (a shell's background job, as
    # `dagster job execute` installs its own handler): KeyboardInterrupt below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with ray_for(root, len(keys)):
            failed = launch_all(instance, pipeline, keys, limit, batch, root)
    except KeyboardInterrupt:
        print(f"interrupted: the running trials were asked to stop; `tinyexp-dagster sweep "
              f"{pipeline.name}` shows their runs, `tinyexp-dagster resume <run id>` continues "
              "one", file=sys.stderr)  # fmt: skip
        return 130
    print_leaderboard(instance, pipeline)
    if failed:
        print(f"{len(failed)} trial(s) did not succeed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def print_rows(rows: list[list[str]]) -> None:
    """Print a table: a header row, then the rows, columns padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def print_leaderboard(instance: Any, pipeline: Pipeline) -> int:
    """Refresh `<name>/sweep_leaderboard` and print its table."""
    result, rows, leader = leaderboard_table(instance, pipeline)
    if not result.success:
        print(f"error: {pipeline.name}/sweep_leaderboard failed (run {result.run_id})",
              file=sys.stderr)  # fmt: skip
        return 1
    print_rows(rows)
    print(f"leader: {leader or 'none yet'}  (run {result.run_id[:8]}; the UI shows it on "
          f"{pipeline.name}/sweep_leaderboard)")  # fmt: skip
    return 0
