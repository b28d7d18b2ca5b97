"""What the project's services share: free ports, the idle-stop setting, file locks, pid
probes (psutil), stopping a daemon by pid, and starting one detached from this process."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from tinyexp_core.config.exceptions import ConfigValueError, RedisStartError

# The conventional Redis port: a system server may own it, so we never start one there.
RESERVED_PORT = 6379
POLL_S = 0.05
STOP_TIMEOUT_S = 5.0  # seconds between SIGTERM and SIGKILL
ENV_IDLE_STOP_S = "TINYEXP_REDIS_IDLE_STOP_S"
DEFAULT_IDLE_STOP_S = 600.0


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that was free a moment ago (never 6379)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port != RESERVED_PORT:
            return port


def idle_stop_s(name: str = ENV_IDLE_STOP_S) -> float:
    """`TINYEXP_REDIS_IDLE_STOP_S` (or the variable `name`, e.g. the local Ray's
    `TINYEXP_RAY_IDLE_STOP_S`): seconds a project-managed service that nobody uses stays up
    (`redis_idle` stops the Redis then, the Ray head's holder itself)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return DEFAULT_IDLE_STOP_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ConfigValueError(name, text, "a finite number of seconds > 0")
    return value


@contextlib.contextmanager
def file_lock(
    lock_file: Path,
    *,
    mode: str = "a+",
    timeout_s: float | None = None,
    on_timeout: Callable[[], BaseException] | None = None,
) -> Iterator[None]:
    """Hold an exclusive flock on `lock_file` (its directory must exist). Without
    `timeout_s` wait as long as it takes; with it, raise `on_timeout()` once it has passed."""
    with open(lock_file, mode) as fh:
        if timeout_s is None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        else:
            _flock_until(fh, time.monotonic() + timeout_s, on_timeout)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _flock_until(
    fh: object, deadline: float, on_timeout: Callable[[], BaseException] | None
) -> None:
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                if on_timeout is None:
                    raise TimeoutError("file lock still held") from None
                raise on_timeout() from None
            time.sleep(POLL_S)


def pid_alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie (an exited daemon nobody reaped yet)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_pid_exit(pid: int, timeout_s: float) -> bool:
    """Wait until `pid` is gone (or a zombie); False if it still runs after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def kill_pid(pid: int) -> None:
    """SIGTERM, wait, then SIGKILL: for a daemon we started (it is not our child)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_pid_exit(pid, STOP_TIMEOUT_S):
            return


def spawn_detached(argv: list[str], log_file: Path, cwd: Path, timeout_s: float) -> int:
    """Run `argv` in the background of a shell that exits at once; return its pid."""
    # The process is re-parented to init: it outlives this process and is not reaped or
    # killed with the children of a Ray worker or a Dagster step. close_fds (the default)
    # keeps our lock file descriptor out of it.
    script = 'log="$1"; shift; exec "$@" </dev/null >>"$log" 2>&1 & echo $!'
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", script, "sh", str(log_file), *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            cwd=cwd,
            timeout=timeout_s,
            check=True,
        )
        return int(done.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise RedisStartError("embedded", f"cannot launch {argv[0]}: {exc}") from None
