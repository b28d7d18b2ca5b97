"""Run-level progress in Redis: the contract between trainers (writers) and sensors (readers).

Keys (see docs/DESIGN.md, "Progress in Redis"):

- `tinyexp:run:<run_id>`: hash of strings; numbers are written with str()/repr() of plain
  Python numbers so readers can float() them.
- `tinyexp:events`: capped stream of `epoch_end`, `checkpoint`, `finished` and `failed`
  events; every entry has the fields `event` and `run_id`.
- `tinyexp:runs:active`: set of the run ids in flight.
- `tinyexp:run:<run_id>:ranks` (hash rank -> JSON: host, pid, ...) and
  `tinyexp:run:<run_id>:stacks` (JSON): who the ranks are, and every rank's stack as the
  stall sensor recorded it (`stacks`); they expire with the run's hash.

Conventions: `epoch` and `step` are 0-based indices of the epoch and of the step within it
that just completed; `num_steps` counts the steps of one epoch.

This package is the only writer and reader of those keys: `keys` names them, `reporter`
writes them from a trainer (rank 0), `readers` parses them (`RunProgress`) and writes a
status from outside a trainer (`mark_status`) and a sweep trial's board
(`write_run_sweep`); `RUN_FIELDS` lists the run hash's fields. `stacks` registers each
rank (`ranks_key`) and collects every rank's Python stack of a hung run (py-spy,
faulthandler) for the stall sensor, which records them under `stacks_key`.
"""

from tinyexp_core.progress.keys import (
    ACTIVE_RUNS_KEY,
    DEFAULT_TTL_S,
    ERROR_MAX_CHARS,
    EVENT_TYPES,
    EVENTS_STREAM,
    FINAL_STATUSES,
    RUN_FIELDS,
    RUN_KEY_PREFIX,
    STATUSES,
    new_run_id,
    ranks_key,
    run_key,
    stacks_key,
)
from tinyexp_core.progress.readers import (
    RunProgress,
    active_run_ids,
    mark_status,
    parse_number,
    read_events,
    read_progress,
    read_run,
    read_runs,
    write_run_sweep,
)
from tinyexp_core.progress.reporter import (
    NullProgressReporter,
    ProgressReporter,
    RedisProgressReporter,
    build_progress_reporter,
)

__all__ = [
    "ACTIVE_RUNS_KEY",
    "DEFAULT_TTL_S",
    "ERROR_MAX_CHARS",
    "EVENTS_STREAM",
    "EVENT_TYPES",
    "FINAL_STATUSES",
    "RUN_FIELDS",
    "RUN_KEY_PREFIX",
    "STATUSES",
    "NullProgressReporter",
    "ProgressReporter",
    "RedisProgressReporter",
    "RunProgress",
    "active_run_ids",
    "build_progress_reporter",
    "mark_status",
    "new_run_id",
    "parse_number",
    "ranks_key",
    "read_events",
    "read_progress",
    "read_run",
    "read_runs",
    "run_key",
    "stacks_key",
    "write_run_sweep",
]
