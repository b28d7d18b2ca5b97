"""The test session's end-of-run check: no redis-server, Ray, Dagster or worker process that
the session started may outlive it.

A process is the session's when it was created after the session started and either still
descends from the pytest process or carries the session's mark in its environment
(`TINYEXP_TEST_SESSION`, set at session start and inherited by everything the tests launch:
detached redis-servers and their idle watchers, Ray's raylet and workers, Dagster
subprocesses). Processes that predate the session (the machine's Redis on 6379, Postgres,
another engineer's test run, which carries another mark) are never counted.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass

import psutil

ENV_SESSION = "TINYEXP_TEST_SESSION"
# What the project or its tests start: Redis, Ray's daemons and workers, Dagster, our CLIs.
WATCHED = re.compile(
    r"redis-server|raylet|gcs_server|ray::|/ray/|dagster|tinyexp|plasma_store|chrom(e|ium)"
)
GRACE_S = 20.0  # Ray's shutdown and a watcher's last poll take a few seconds
ENV_GRACE_S = "TINYEXP_TEST_LEFTOVER_GRACE_S"  # shorter in the check's own test


@dataclass(frozen=True)
class Snapshot:
    """The session's mark and the processes that existed when it started."""

    mark: str
    before: frozenset[tuple[int, float]]
    started_at: float


def start_session() -> Snapshot:
    """Mark this session in the environment (children inherit it) and list what runs now."""
    mark = uuid.uuid4().hex[:12]
    outer = os.environ.get(ENV_SESSION)
    # A pytest run inside a test keeps the outer marks: its processes are the outer's too.
    os.environ[ENV_SESSION] = f"{outer}:{mark}" if outer else mark
    before = frozenset(_identity(p) for p in psutil.process_iter() if _identity(p))
    return Snapshot(mark, before, time.time())


def _identity(proc: psutil.Process) -> tuple[int, float] | None:
    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return None


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return ""


def _what_it_runs(proc: psutil.Process) -> str:
    """Name, program and arguments, without the program's directory: a checkout or venv
    path (`/ci/tinyexp-dagster/.venv/bin/python`) must not make every Python match."""
    try:
        argv = proc.cmdline()
        name = proc.name()
    except psutil.Error:
        return ""
    program = os.path.basename(argv[0]) if argv else ""
    return " ".join([name, program, *argv[1:]])


def _carries(proc: psutil.Process, mark: str) -> bool:
    try:
        return mark in proc.environ().get(ENV_SESSION, "").split(":")
    except psutil.Error:
        return False  # another user's process, or gone


def find_leftovers(snap: Snapshot) -> list[psutil.Process]:
    """Live processes the session started that match WATCHED."""
    me = psutil.Process()
    descendants = {p.pid for p in me.children(recursive=True)}
    found = []
    for proc in psutil.process_iter():
        ident = _identity(proc)
        if ident is None or ident in snap.before or proc.pid == me.pid:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if not WATCHED.search(_what_it_runs(proc)):
            continue
        if proc.pid in descendants or _carries(proc, snap.mark):
            found.append(proc)
    return found


def wait_for_leftovers(snap: Snapshot, grace_s: float = GRACE_S) -> list[psutil.Process]:
    """`find_leftovers`, after waiting up to `grace_s` for them to exit on their own."""
    deadline = time.monotonic() + grace_s
    while True:
        left = find_leftovers(snap)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def describe(procs: list[psutil.Process]) -> list[str]:
    """`pid 123: redis-server /tmp/.../redis.conf`, one line per process."""
    return [f"pid {p.pid}: {_cmdline(p)[:300]}" for p in procs]


def kill(procs: list[psutil.Process]) -> None:
    """End the leftovers (they are the session's), so a failed check leaves a clean machine."""
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
