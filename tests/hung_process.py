"""A real rank process for the stack-collection tests: it registers itself like a Ray
rank does (`announce_rank`), then waits in a function whose name the stacks must show."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# The frame every stack of this process must contain.
WAIT_FUNCTION = "wait_for_a_peer_that_never_comes"
_SCRIPT = f"""
import sys, time
from tinyexp_core.progress.stacks import announce_rank

url, run_id, rank, run_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
announce_rank(url, run_id, rank, run_dir=run_dir, ttl_s=600)

def {WAIT_FUNCTION}():
    print("ready", flush=True)
    while True:
        time.sleep(0.05)

{WAIT_FUNCTION}()
"""


@contextlib.contextmanager
def hung_rank(url: str, run_id: str, rank: int, run_dir: Path) -> Iterator[subprocess.Popen]:
    """A process registered as `rank` of `run_id`, waiting forever; killed on exit (also
    when a test stopped it with SIGSTOP: SIGCONT first, then SIGKILL)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, url, run_id, str(rank), str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "ready", f"the rank process did not start: {line!r}"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
