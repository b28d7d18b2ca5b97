"""The redis-server shards a RedisClusterManager owns (TinyExp 0.0.1's cluster manager,
used by the Redis sample cache): started on free or given ports, reused where a Redis already
answers, stopped at the end."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import redis
from loguru import logger

from tinyexp_core.config.exceptions import (
    ConfigValueError,
    RedisClusterConfigError,
    RedisStartError,
)
from tinyexp_core.files import atomic_write_text
from tinyexp_core.services.lifecycle import STOP_TIMEOUT_S, free_port
from tinyexp_core.services.redis_client import make_client, probe_redis, redact_url
from tinyexp_core.services.redis_process import (
    check_min,
    redis_server_executable,
    server_config,
    wait_until_ready,
)


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
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
        check_min("num_shards", num_shards, 1)
        check_min("start_timeout_s", start_timeout_s, 0.1)
        ports = [int(port) for port in ports]
        if max_memory_per_port is not None:
            max_memory_mb = _memory_gb_to_mb(ports, max_memory_per_port)
        check_min("max_memory_mb", max_memory_mb, 1)
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
                wait_until_ready(
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
        text = server_config(
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
