"""The embedded Redis of a storage root (issue 15, must-show 1 and 2), through the real
pipeline: `prepared_dataset` + `trained_model` (1 Ray worker, 1 epoch) with no Redis URL
configured, so the training step starts the root's embedded server.

1. Three temporary storage roots with `TINYEXP_REDIS_IDLE_STOP_S` short: after the idle time
   each root's redis-server process is gone and its address and password files removed; a
   new run on the same root starts a fresh server and works.
2. The server requires its password: a client without it is refused (NOAUTH), while the
   ranks' progress writes, the CLI progress view and the sensors, which find the password
   under the storage root, work.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
import redis
from dagster._core.test_utils import instance_for_test

from tests.dagster.support import ASSET_CHECKS, ASSETS, key, materializations, run_config
from tinyexp_core.config.exceptions import ConfigValueError, InvalidRedisUrlError
from tinyexp_core.progress import read_progress
from tinyexp_core.services.embedded_redis import EmbeddedRedis
from tinyexp_core.services.lifecycle import ENV_IDLE_STOP_S
from tinyexp_core.services.redis_client import classify_redis_error, make_client
from tinyexp_dagster.cli import main as cli_main
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    StallSettingsResource,
    StorageResource,
)
from tinyexp_dagster.sensors import stalled_training_sensor, training_progress_sensor

IDLE_STOP_S = 4.0
SELECTION = ["prepared_dataset", "trained_model"]


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with instance_for_test() as inst:
        yield inst


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Three storage roots with no Redis URL configured and a short idle stop."""
    monkeypatch.delenv("TINYEXP_REDIS_URL", raising=False)
    monkeypatch.setenv(ENV_IDLE_STOP_S, str(IDLE_STOP_S))
    paths = [tmp_path / f"root-{i}" for i in range(3)]
    yield paths
    for path in paths:
        EmbeddedRedis(path).stop()


def _resources(root: Path, **redis_fields: Any) -> dict[str, Any]:
    return {
        "ray": RayDDPResource(num_workers=1, num_cpus_per_worker=1),
        "redis": RedisProgressResource(**redis_fields),
        "storage": StorageResource(root=str(root)),
        "stalls": StallSettingsResource(),
    }


def _train(instance: dg.DagsterInstance, root: Path) -> str:
    """Materialize the dataset and the model on `root`; return the Dagster run id."""
    result = dg.materialize(
        [*ASSETS, *ASSET_CHECKS],
        selection=[key(asset) for asset in SELECTION],
        instance=instance,
        resources=_resources(root),
        run_config=run_config(SELECTION),
    )
    assert result.success
    assert "trained_model" in materializations(result)
    return result.run_id


def _check_clients(instance: dg.DagsterInstance, root: Path, run_id: str, capsys) -> int:
    """Must-show 2 on a live server: refusal without the password; ranks, CLI and sensors
    work with it. Every step connects, so the server stays busy meanwhile. Returns its pid."""
    server = EmbeddedRedis(root)
    url, pid = server.url(), server.pid()
    assert url is not None and pid is not None
    password = server.password_file.read_text().strip()
    assert server.password_file.stat().st_mode & 0o777 == 0o600
    assert server.state_dir.stat().st_mode & 0o777 == 0o700
    # The ranks wrote through TINYEXP_PROGRESS_URL, which carries the password.
    client = make_client(url)
    try:
        progress = read_progress(client, run_id)
        assert progress.status == "succeeded" and progress.epoch == 0, progress
    finally:
        client.close()
    # Without the password the server refuses, and the project says so (auth, not outage).
    anonymous = make_client(url.replace(f":{password}@", ""))
    with pytest.raises(redis.AuthenticationError) as refused:
        anonymous.get("x")
    anonymous.close()
    assert classify_redis_error(refused.value) == "auth"
    host, port = url.partition("@")[2].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(b"GET x\r\n")
        assert raw.recv(100).startswith(b"-NOAUTH")
    # The password is in no run log, no metadata, no file the run wrote.
    assert password not in repr(instance.all_logs(run_id))
    for path in root.rglob("*"):
        if path.is_file() and server.state_dir not in path.parents:
            assert password.encode() not in path.read_bytes(), path
    assert cli_main(["--storage-root", str(root), "redis", "url"]) == 0
    assert password not in capsys.readouterr().out
    # The CLI progress view finds the password under the storage root.
    assert cli_main(["--storage-root", str(root), "progress", run_id, "--once"]) == 0
    out = capsys.readouterr().out
    assert f"{run_id}  succeeded" in out and password not in out
    # The sensors too: the progress sensor observes the run's events, the stall sensor reads.
    resources = {
        "redis": RedisProgressResource(),
        "storage": StorageResource(root=str(root)),
        "stalls": StallSettingsResource(),
    }
    context = dg.build_sensor_context(instance=instance, cursor="0-0", resources=resources)
    observed = training_progress_sensor.evaluate_tick(context)
    runs = {obs.metadata["run_id"].value for obs in observed.asset_events}
    assert runs == {run_id}, observed
    context = dg.build_sensor_context(instance=instance, resources=resources)
    assert not stalled_training_sensor.evaluate_tick(context).run_requests
    # A sensor configured with the address but not the password fails its tick (NOAUTH).
    bad = {**resources, "redis": RedisProgressResource(url=url.replace(f":{password}@", ""))}
    context = dg.build_sensor_context(instance=instance, cursor="0-0", resources=bad)
    with pytest.raises(InvalidRedisUrlError, match="authentication failed"):
        training_progress_sensor.evaluate_tick(context)
    return pid


def _wait_gone(pids: dict[Path, int], timeout_s: float) -> dict[Path, float]:
    """Seconds until each root's server process ended (fails after `timeout_s`)."""
    start, gone = time.monotonic(), {}
    while len(gone) < len(pids) and time.monotonic() - start < timeout_s:
        for root, pid in pids.items():
            if root not in gone and not _running(pid):
                gone[root] = time.monotonic() - start
        time.sleep(0.2)
    assert len(gone) == len(pids), f"still running after {timeout_s:g} s: {pids}, gone {gone}"
    return gone


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_embedded_redis_stops_when_idle_and_restarts_on_the_next_run(
    ray_cluster, instance, roots, capsys
) -> None:
    pids = {}
    for root in roots:
        run_id = _train(instance, root)
        pids[root] = _check_clients(instance, root, run_id, capsys)
    assert len(set(pids.values())) == 3  # one server per storage root

    # Generous bound: idle time, the watcher's poll, a loaded CI machine.
    gone = _wait_gone(pids, timeout_s=IDLE_STOP_S + 30)
    with capsys.disabled():  # the measured times, for the record (`pytest -s`)
        print("\nredis-server gone after", {r.name: f"{t:.1f} s" for r, t in gone.items()})
    for root in roots:
        server = EmbeddedRedis(root)
        assert not server.url_file.exists() and not server.password_file.exists()
        assert server.url() is None

    # A new run on the same root starts a fresh server (new password) and works.
    root = roots[0]
    run_id = _train(instance, root)
    assert _check_clients(instance, root, run_id, capsys) != pids[root]


def test_a_bad_idle_stop_setting_fails_the_run_naming_it(
    instance, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TINYEXP_REDIS_URL", raising=False)
    monkeypatch.setenv(ENV_IDLE_STOP_S, "soon")
    redis_res = RedisProgressResource()
    expected = rf"'{ENV_IDLE_STOP_S}': got 'soon', allowed: a finite number of seconds > 0"
    with pytest.raises(ConfigValueError, match=expected):
        redis_res.resolve_url(str(tmp_path))
    assert not (tmp_path / "redis" / "redis.pid").exists()
