"""How a process ends after a training stopped from its terminal.

Ctrl-C or SIGTERM on `dagster job execute`, `dagster asset materialize` or `tinyexp-dagster
resume` is a stop (`assets/outcome.py`): every rank checkpoints, the run ends CANCELED and
Dagster's CLI says so. Then the process exits as a process ended by that signal is expected
to (130 after SIGINT, 143 after SIGTERM: scripts and supervisors read it as "stopped", not
as a crash or a success), and its last line names the command that continues the run.

Dagster's CLI decides its own exit status (1 for any run that did not succeed), so the
exit is taken at interpreter shutdown: the other exit handlers (Ray's, logging's,
multiprocessing's) run first, so nothing is printed after the command and nothing is left
running.
"""

from __future__ import annotations

import atexit
import os
import shlex
import sys
from pathlib import Path

_pending: dict[str, object] = {}


def resume_command(run_id: str, storage_root: str) -> str:
    """`tinyexp-dagster resume <run id>`, naming the storage root when it is not the one the
    command finds by itself ($TINYEXP_STORAGE_ROOT, else ./.tinyexp)."""
    from tinyexp_dagster.resources.storage import default_storage_root

    words = ["tinyexp-dagster"]
    if _resolved(storage_root) != _resolved(default_storage_root()):
        words += ["--storage-root", shlex.quote(str(storage_root))]
    return " ".join([*words, "resume", run_id])


def _resolved(root: str) -> str:
    if "://" in root:  # an object-store URI is compared as written
        return root.rstrip("/")
    return str(Path(root).expanduser().resolve())


def exit_after_run(signum: int, command: str) -> None:
    """When this process ends: print `continue with: <command>` as its last line and exit
    128 + `signum`. Called once the stop is certain; a later call replaces the command
    (a resume run stopped again names itself)."""
    first = not _pending
    _pending.update(code=128 + int(signum), command=command)
    if first:
        atexit.register(_exit_now)


def pending_exit() -> tuple[int, str] | None:
    """(exit status, command) this process will end with, if a terminal stop happened."""
    if not _pending:
        return None
    return int(_pending["code"]), str(_pending["command"])  # type: ignore[call-overload]


def _exit_now() -> None:
    """The exit handler: the others first, then the last line, then the status."""
    atexit.unregister(_exit_now)
    # Exit handlers run last-registered first, and this one came late: run the rest now
    # (an exit handler may start the others; CPython clears the list once they ran).
    atexit._run_exitfuncs()
    code, command = pending_exit() or (1, "")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    try:
        print(f"continue with: {command}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
    os._exit(code)
