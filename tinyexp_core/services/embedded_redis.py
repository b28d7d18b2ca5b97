"""The project's embedded Redis: one daemonized redis-server per storage root, found by every
process that uses that root, and the URL helpers that pick it or a configured server."""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import redis
from loguru import logger

from tinyexp_core.config.exceptions import RedisStartError
from tinyexp_core.files import atomic_write_text
from tinyexp_core.services.lifecycle import (
    STOP_TIMEOUT_S,
    file_lock,
    free_port,
    idle_stop_s,
    kill_pid,
    pid_alive,
    spawn_detached,
    wait_pid_exit,
)
from tinyexp_core.services.redis_client import (
    PROBE_TIMEOUT_S,
    make_client,
    redact_url,
    validate_redis_url,
)
from tinyexp_core.services.redis_process import (
    check_min,
    is_redis_process,
    redis_server_executable,
    server_config,
    shutdown_nosave,
    wait_until_ready,
)

_START_ATTEMPTS = 3  # free_port() is racy: another process may take the port before redis binds


def resolve_redis_url(url: str | None, storage_root: str | Path) -> str:
    """The configured Redis URL (validated), or the embedded server's for this storage root."""
    if url:
        return validate_redis_url(url)
    return EmbeddedRedis(storage_root).ensure()


def find_redis_url(
    url: str | None, storage_root: str | Path, *, url_name: str
) -> tuple[str | None, str]:
    """For readers: (the configured URL, validated, or the embedded server's, "") or
    (None, why there is no server to read). Never starts a server. `url_name` names where the
    URL would come from (an environment variable), for the message."""
    if url:
        return validate_redis_url(url), ""
    server = EmbeddedRedis(storage_root)
    found = server.url()
    if found:
        return found, ""
    try:
        stale = server.url_file.read_text().strip()
    except OSError:
        stale = ""
    if stale:
        return None, (
            f"Redis unreachable at {redact_url(stale)}: the embedded server of {storage_root} "
            "does not answer"
        )
    return None, (
        f"no progress store yet: {url_name} is unset and no embedded Redis runs under "
        f"{storage_root} (the first training run starts it)"
    )


class EmbeddedRedis:
    """The project's default progress store: one daemonized redis-server per storage root.

    State lives in `<storage_root>/redis/` (mode 0700). Every process that uses the same
    storage root finds the same server through the address file `redis.url` and the password
    file `redis.password` (0600, a fresh `secrets.token_urlsafe` per start: a client without
    it gets NOAUTH); `ensure()` starts one under a file lock only if none answers. The server
    outlives its starter: a detached watcher (`tinyexp_core.services.redis_idle`) stops it
    once it has been idle for `TINYEXP_REDIS_IDLE_STOP_S` seconds and no holder (`make dev`,
    `dagster dev`) lives; `stop()` ends it at once.
    """

    def __init__(
        self, storage_root: str | Path, *, start_timeout_s: float = 10.0, max_memory_mb: int = 256
    ) -> None:
        check_min("start_timeout_s", start_timeout_s, 0.1)
        check_min("max_memory_mb", max_memory_mb, 1)
        self.state_dir = Path(storage_root).absolute() / "redis"
        self.url_file = self.state_dir / "redis.url"  # address only, never the password
        self.password_file = self.state_dir / "redis.password"
        self.pid_file = self.state_dir / "redis.pid"
        self.holders_dir = self.state_dir / "holders"
        self.watch_log_file = self.state_dir / "watch.log"
        self.log_file = self.state_dir / "redis.log"
        self.lock_file = self.state_dir / "redis.lock"
        self.conf_file = self.state_dir / "redis.conf"
        self.start_timeout_s = start_timeout_s
        self.max_memory_mb = max_memory_mb

    def ensure(self) -> str:
        """URL (with its password) of this storage root's server, starting one if none
        answers. Redact it before showing it."""
        return self.ensure_started()[0]

    def ensure_started(self) -> tuple[str, bool]:
        """(`ensure()`'s URL, whether this call started the server)."""
        idle_s = idle_stop_s()  # a bad setting fails before anything starts
        with self._locked():
            url = self.url()
            if url is not None:
                return url, False
            return self._start(idle_s), True

    def url(self) -> str | None:
        """URL of this storage root's live server, or None; never starts one."""
        url, pid = self._read_state()
        if url is not None and pid is not None and self._is_ours(url, pid):
            return url
        return None

    def pid(self) -> int | None:
        """Process id of this storage root's live server, or None."""
        url, pid = self._read_state()
        if url is not None and pid is not None and self._is_ours(url, pid):
            return pid
        return None

    def stop(self, *, only_pid: int | None = None) -> bool:
        """Stop this storage root's server and remove its address and password files; True if
        one was stopped. With `only_pid`, act only if the recorded server is that process
        (the idle watcher: never a server started after the one it watched)."""
        if not self.state_dir.is_dir():
            return False
        with self._locked():
            url, pid = self._read_state()
            if only_pid is not None and pid != only_pid:
                return False
            ours = url is not None and pid is not None and self._is_ours(url, pid)
            hung = not ours and pid is not None and is_redis_process(pid, self.state_dir)
            # The files go first: once the process has gone, nobody finds its address.
            self._clear_state()
            if ours:
                shutdown_nosave(url)
                if not wait_pid_exit(pid, STOP_TIMEOUT_S):
                    kill_pid(pid)
            elif hung:
                # Listed as ours but not answering: a hung server we started; end it by pid.
                kill_pid(pid)
            stopped = ours or hung
        if stopped:
            logger.info("stopped the embedded Redis of {}", self.state_dir)
        return stopped

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive flock on the lock file, so only one process starts a server."""
        self._ensure_private_dir()
        # Waits out a holder that is starting a server (up to every attempt's timeout).
        timeout_s = _START_ATTEMPTS * self.start_timeout_s + 5.0

        def late() -> RedisStartError:
            return RedisStartError(
                "embedded", f"lock {self.lock_file} held by another process for {timeout_s:g} s"
            )

        with file_lock(self.lock_file, timeout_s=timeout_s, on_timeout=late):
            yield

    def _read_state(self) -> tuple[str | None, int | None]:
        """(authenticated URL, pid) from the state files; None where one is missing."""
        try:
            address = self.url_file.read_text().strip() or None
            password = self.password_file.read_text().strip() or None
        except OSError:
            address = password = None
        try:
            pid: int | None = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        url = _with_password(address, password) if address and password else None
        return url, pid

    def _clear_state(self) -> None:
        for path in (self.url_file, self.pid_file, self.password_file):
            path.unlink(missing_ok=True)

    @staticmethod
    def _is_ours(url: str, pid: int) -> bool:
        """The server at `url` answers and is the process in our pid file (not a port reuser)."""
        client = make_client(
            url, socket_timeout_s=PROBE_TIMEOUT_S, connect_timeout_s=PROBE_TIMEOUT_S
        )
        try:
            return int(client.info("server")["process_id"]) == pid
        except (redis.RedisError, OSError, KeyError, ValueError):
            return False
        finally:
            client.close()

    def _start(self, idle_stop_s: float) -> str:
        _, pid = self._read_state()
        if pid is not None and is_redis_process(pid, self.state_dir):
            # Ours but unusable (hung, or started before servers had passwords): without
            # its pid file nothing would ever stop it.
            kill_pid(pid)
        self._clear_state()
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = free_port("127.0.0.1")
            try:
                url, pid = self._launch(port)
            except RedisStartError as exc:
                if "in use" not in exc.reason or attempt == _START_ATTEMPTS:
                    raise
                continue
            self._start_watcher(pid, idle_stop_s)
            logger.info(
                "started the embedded Redis of {} at {} (stops after {:g} s idle)",
                self.state_dir,
                redact_url(url),
                idle_stop_s,
            )
            return url
        raise AssertionError("unreachable")  # the loop returns or raises

    def _launch(self, port: int) -> tuple[str, int]:
        """Start a detached redis-server on 127.0.0.1:`port` with a fresh password, wait for
        PING, record it; return (authenticated URL, pid)."""
        password = secrets.token_urlsafe(32)
        url = _with_password(f"redis://127.0.0.1:{port}/0", password)
        text = server_config(
            host="127.0.0.1",
            port=port,
            data_dir=self.state_dir,
            max_memory_mb=self.max_memory_mb,
            # Under memory pressure evict finished runs (they have a TTL), never active ones.
            eviction="volatile-lru",
            password=password,
        )
        # The password lives in 0600 files only (config, password file), never in argv.
        atomic_write_text(self.conf_file, text, mode=0o600)
        self.log_file.write_bytes(b"")
        argv = [redis_server_executable(), str(self.conf_file)]
        pid = spawn_detached(argv, self.log_file, self.state_dir, self.start_timeout_s)
        try:
            wait_until_ready(url, port, self.log_file, self.start_timeout_s, lambda: pid_alive(pid))
        except BaseException:
            kill_pid(pid)
            raise
        atomic_write_text(self.password_file, f"{password}\n", mode=0o600)
        atomic_write_text(self.pid_file, f"{pid}\n", mode=0o600)
        atomic_write_text(self.url_file, f"redis://127.0.0.1:{port}/0\n", mode=0o600)
        return url, pid

    def _start_watcher(self, pid: int, idle_stop_s: float) -> None:
        """Start the detached idle watcher of server `pid` (it stops the server, not us)."""
        argv = [
            sys.executable,
            "-m",
            "tinyexp_core.services.redis_idle",
            str(self.state_dir.parent),
        ]
        argv += ["--pid", str(pid), "--idle-stop-s", repr(idle_stop_s)]
        try:
            spawn_detached(argv, self.watch_log_file, self.state_dir, self.start_timeout_s)
        except RedisStartError:
            # A server nobody would stop is the leak this watcher exists to prevent.
            kill_pid(pid)
            self._clear_state()
            raise

    def _ensure_private_dir(self) -> None:
        """Create the state directory owner-only (0700): it holds the password."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.state_dir.stat().st_mode & 0o077:
            self.state_dir.chmod(0o700)


def _with_password(url: str, password: str) -> str:
    """`redis://host:port/0` -> `redis://:PASSWORD@host:port/0`."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://:{quote(password, safe='')}@{rest}"
