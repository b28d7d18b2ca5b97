"""`dagster dev` owns the embedded Redis it started: kept while it lives, stopped when it
exits (tinyexp_dagster/dev_redis.py). A stand-in process named `dagster dev` registers itself
the way the code server of a real `dagster dev` registers its ancestor."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinyexp_core.services.embedded_redis import EmbeddedRedis
from tinyexp_core.services.lifecycle import ENV_IDLE_STOP_S, pid_alive
from tinyexp_dagster.dev_redis import ENV_DEV_CLI, hold_embedded_redis_for_dagster_dev
from tinyexp_dagster.resources import StorageResource

STAND_IN = """
import sys, time
from tinyexp_dagster.dev_redis import hold_embedded_redis_for_dagster_dev
from tinyexp_dagster.resources import StorageResource
assert hold_embedded_redis_for_dagster_dev(StorageResource(root=sys.argv[2]), None)
print("held", flush=True)
time.sleep(120)
"""


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_dagster_dev_keeps_the_server_it_started_and_stops_it_on_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "storage"
    script = tmp_path / "dagster"  # argv: python .../dagster dev ROOT, like `dagster dev`
    script.write_text(STAND_IN)
    monkeypatch.setenv(ENV_DEV_CLI, "1")
    monkeypatch.setenv(ENV_IDLE_STOP_S, "1")  # the idle rule alone would stop it in ~1 s
    dev = subprocess.Popen([sys.executable, str(script), "dev", str(root)], stdout=subprocess.PIPE)
    server = EmbeddedRedis(root)
    try:
        assert dev.stdout is not None and dev.stdout.readline().strip() == b"held"
        pid = server.pid()
        assert pid is not None
        time.sleep(4)  # several idle periods: the holder keeps it
        assert server.pid() == pid
    finally:
        dev.kill()
        dev.wait()
    assert _wait(lambda: not pid_alive(pid), 10.0)
    assert not server.url_file.exists() and not server.password_file.exists()
    server.stop()


def test_outside_dagster_dev_nothing_is_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_DEV_CLI, raising=False)
    storage = StorageResource(root=str(tmp_path / "storage"))
    assert not hold_embedded_redis_for_dagster_dev(storage, None)
    monkeypatch.setenv(ENV_DEV_CLI, "1")
    assert not hold_embedded_redis_for_dagster_dev(storage, "redis://127.0.0.1:6379/0")
    # pytest is no `dagster dev`: no holder to register, so nothing starts
    assert not hold_embedded_redis_for_dagster_dev(storage, None)
    assert not (tmp_path / "storage" / "redis" / "redis.pid").exists()
