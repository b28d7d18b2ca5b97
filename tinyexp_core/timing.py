"""Phase timestamps for benchmarks: `mark(name)` appends `name unix_time pid` to the file
named by `$TINYEXP_TIMING_FILE`. Without that variable it does nothing."""

from __future__ import annotations

import os
import time

ENV_TIMING_FILE = "TINYEXP_TIMING_FILE"


def mark(name: str) -> None:
    """Record that phase `name` was reached (only when a timing file is configured)."""
    path = os.environ.get(ENV_TIMING_FILE)
    if not path:
        return
    with open(path, "a") as f:
        f.write(f"{name} {time.time():.6f} {os.getpid()}\n")


def read_marks(path: str) -> list[tuple[str, float, int]]:
    """The marks written so far, in file order."""
    marks = []
    with open(path) as f:
        for line in f:
            name, stamp, pid = line.split()
            marks.append((name, float(stamp), int(pid)))
    return marks
