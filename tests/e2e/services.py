"""External services of the scale-out test: a Ray head started with `ray start`, and a
fresh Postgres database. Each is created for one test and removed after it.

Ray: `ray stop` stops every Ray on the machine, including other tests' local Rays, so it
is never called. The head gets its own `--temp-dir` (so `ray.init()` elsewhere does not
find it through `/tmp/ray/ray_current_cluster`), its own ports and its own auth token
(`RAY_AUTH_TOKEN`, not `~/.ray/auth_token`); it is stopped by SIGTERM to `ray start
--block`, then any process still naming its temp dir is killed.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

from tests.e2e.helpers import VENV_BIN, ManagedProcess, free_port, tail, wait_for

RAY_STARTUP_S = 180


@dataclass
class RayHead:
    """A running head: its address, the env a driver needs, its temp dir (logs, sockets)."""

    address: str
    driver_env: dict[str, str]
    temp_dir: Path
    process: ManagedProcess

    @property
    def logs_dir(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"


def _head_started(head: ManagedProcess, port: int) -> bool:
    head.check_alive()
    if "Ray runtime started" not in tail(head.log_path, 20_000):
        return False
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


def _kill_processes_naming(marker: str) -> list[str]:
    """Kill processes whose command line contains `marker`; returns what was killed."""
    killed = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if marker in cmdline:
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed.append(f"pid {proc.info['pid']}: {cmdline[:160]}")
    return killed


# Ray's own limit (hard-coded, 30 s in ray/_private/node.py) for the raylet to register
# with the GCS: on a loaded 2-core machine it was once missed (CI, the sweep backfill test).
# Such a head exits with this line; it is started once more, with new ports and temp dir.
_RAYLET_TOO_SLOW = "timed out during startup"
_HEAD_ATTEMPTS = 2


def _head_args(port: int, num_cpus: int, temp_dir: Path) -> list[str]:
    return [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        "--include-dashboard=false",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={256 * 1024 * 1024}",
        # Fixed defaults (10001, 8265, 52365) would collide with another head on the machine.
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        "--block",
    ]


def _stop_head(head: ManagedProcess, temp_dir: Path) -> list[str]:
    """Stop a head and whatever still names its temp dir; the stragglers."""
    stragglers = head.stop(grace_s=60)
    stragglers += _kill_processes_naming(str(temp_dir))
    shutil.rmtree(temp_dir, ignore_errors=True)
    return stragglers


def _start_head(
    env: Mapping[str, str], log_path: Path, num_cpus: int, attempt: int
) -> tuple[ManagedProcess, Path, int] | None:
    """A head accepting connections: (process, temp dir, port); None when Ray gave up
    waiting for its raylet and another attempt is left."""
    # Short path: Ray's unix sockets live under it (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="txray-", dir="/tmp"))
    port = free_port()
    if attempt > 1:
        log_path = log_path.with_suffix(f".attempt{attempt}{log_path.suffix}")
    head = ManagedProcess("ray head", _head_args(port, num_cpus, temp_dir), env, log_path,
                          term_group=False)  # fmt: skip
    try:
        wait_for(
            lambda: _head_started(head, port),
            timeout_s=RAY_STARTUP_S,
            what=f"the Ray head on port {port}",
            context=head.tail,
        )
    except AssertionError:
        stragglers = _stop_head(head, temp_dir)
        retry = attempt < _HEAD_ATTEMPTS and _RAYLET_TOO_SLOW in tail(log_path, 20_000)
        if retry and not stragglers:
            print(f"the Ray head missed Ray's raylet start limit (log {log_path}); again")
            return None
        raise
    return head, temp_dir, port


@contextlib.contextmanager
def ray_head(env: Mapping[str, str], log_path: Path, *, num_cpus: int = 2) -> Iterator[RayHead]:
    """`ray start --head` on this machine with 2 CPUs and token authentication; yields once
    it accepts connections. Fails (does not skip) when it cannot start (a second attempt
    only after Ray's own raylet start limit, see _RAYLET_TOO_SLOW)."""
    token = secrets.token_hex(32)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    started = None
    for attempt in range(1, _HEAD_ATTEMPTS + 1):
        started = _start_head({**env, **auth}, log_path, num_cpus, attempt)
        if started is not None:
            break
    assert started is not None
    head, temp_dir, port = started
    try:
        address = f"127.0.0.1:{port}"
        yield RayHead(address, {"RAY_ADDRESS": address, **auth}, temp_dir, head)
    finally:
        stragglers = _stop_head(head, temp_dir)
    assert not stragglers, f"processes outlived the Ray head's shutdown: {stragglers}"


def dagster_postgres_url(url: str) -> str:
    """The URL with SQLAlchemy's psycopg2 driver named: SQLAlchemy 2.1 maps a bare
    `postgresql://` to psycopg 3, which dagster-postgres does not install."""
    scheme, rest = url.split("://", 1)
    if scheme in ("postgres", "postgresql"):
        scheme = "postgresql+psycopg2"
    return f"{scheme}://{rest}"


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty database `tinyexp_e2e_<random>` on the server of `server_url`, dropped
    after (its connections closed by force); yields its libpq URL."""
    import psycopg2

    name = f"tinyexp_e2e_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(server_url)
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
