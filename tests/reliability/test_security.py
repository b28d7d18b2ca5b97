"""Item 8: checkpoints load with weights_only=True (a pickle payload is refused, not run);
the embedded Redis, a local Ray and the DDP rendezvous listen on loopback only; the Redis
password comes from an environment variable (Dagster `EnvVar`) and never shows in run
logs, metadata, run config or files.

The unit form of the weights_only rule is
tests/core/test_checkpoint.py::test_unsafe_pickle_is_corrupt_not_executed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import psutil
import pytest
import torch

from tests.reliability.exps import ReliabilityExp
from tests.reliability.support import (
    FAST,
    REDIS_PASSWORD,
    REPO_ROOT,
    prepared_dataset,
    redis_client,
    resources,
    train_config,
    trained_model,
)
from tinyexp_core.checkpoint import load_checkpoint, save_checkpoint
from tinyexp_core.config.factory import build_exp
from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec
from tinyexp_core.progress import read_run
from tinyexp_dagster.resources import RedisProgressResource

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


class PayloadOnLoad:
    """Unpickling this calls Path.touch(marker): a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _launch(run_root: Path, prepared: str, *overrides: str) -> tuple[dict, list[str]]:
    exp = build_exp(
        ReliabilityExp,
        [
            *FAST,
            f"output_root={run_root}",
            "run_id=secure",
            f"data_cfg.prepared_path={prepared}",
            "resume_from=auto",
            *overrides,
        ],
    )
    lines: list[str] = []
    result = RayLauncher(RayLaunchSpec(num_workers=1), log_callback=lines.append).run(exp)
    return result[0], lines


def test_resume_refuses_a_pickle_payload_even_with_a_valid_sidecar(
    ray_cluster, digits_prepared, tmp_path
):
    run_root = tmp_path / "runs"
    _launch(run_root, digits_prepared, "train_cfg.num_epochs=1")
    checkpoints = run_root / "secure" / "checkpoints"
    last = checkpoints / "last.pt"

    # Someone who can write the run dir plants a payload, sidecar and all.
    marker = tmp_path / "payload-ran"
    state = load_checkpoint(last)
    state["extra"]["payload"] = PayloadOnLoad(marker)
    save_checkpoint(state, last)

    summary, lines = _launch(run_root, digits_prepared, "train_cfg.num_epochs=2")
    assert not marker.exists(), "the payload ran while resuming"
    assert summary.resumed_from == str(checkpoints / "epoch_0000.pt")
    (warning,) = [line for line in lines if "is unusable" in line]
    assert f"{last} is unusable (torch.load failed: UnpicklingError" in warning
    assert f"falling back to {checkpoints / 'epoch_0000.pt'}" in warning

    # The payload is live: a plain torch.load (weights_only=False) would have run it.
    planted = tmp_path / "planted.pt"
    torch.save({"format": "x", "model": {}, "extra": PayloadOnLoad(marker)}, planted)
    torch.load(planted, weights_only=False)
    assert marker.exists()


def _listening(pid: int) -> list[tuple[str, int]]:
    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def test_embedded_redis_listens_on_loopback_only(tmp_path):
    from tinyexp_core.services.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "storage")
    url = server.ensure()
    try:
        sockets = _listening(server.pid())
        assert sockets and {ip for ip, _ in sockets} <= LOOPBACK, sockets
        assert url.partition("@")[2].startswith("127.0.0.1:") and not url.endswith(":6379/0")
        conf = server.conf_file.read_text()
        assert "bind 127.0.0.1" in conf and "protected-mode yes" in conf
    finally:
        server.stop()


_LISTEN_PROBE = """
import json, threading, time
import psutil
from tinyexp_core.config.factory import build_exp
from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec

seen, stop = {}, threading.Event()

def sample():
    me = psutil.Process()
    while not stop.is_set():
        for proc in [me] + me.children(recursive=True):
            try:
                name = f"{proc.name()} {' '.join(proc.cmdline())[:60]}"
                for c in proc.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        seen[f"{proc.pid}|{c.laddr.ip}|{c.laddr.port}"] = name
            except psutil.Error:
                pass
        time.sleep(0.1)

launcher = RayLauncher(RayLaunchSpec(num_workers=2, address=""))
launcher.on_started = lambda _: threading.Thread(target=sample, daemon=True).start()
result = launcher.run(build_exp("tinyexp_core.examples.pi_exp:Exp", []))
stop.set()
print(json.dumps({"seen": seen, "world_size": result[0]["world_size"]}))
"""


@pytest.mark.timeout(180)
def test_local_ray_and_ddp_rendezvous_listen_on_loopback_only():
    # A fresh process: RayLauncher starts (and stops) its own local Ray there, as the CLI
    # and a Dagster run worker without RAY_ADDRESS do.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", _LISTEN_PROBE],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=REPO_ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["world_size"] == 2
    sockets = [(*key.split("|"), name) for key, name in report["seen"].items()]
    names = " ".join(name for *_, name in sockets)
    for process in ("gcs_server", "raylet", "_RankWorker"):
        assert process in names, names  # the sampler saw the whole job
    exposed = [s for s in sockets if s[1] not in LOOPBACK]
    assert exposed == [], exposed


def test_redis_password_from_env_never_reaches_logs_or_metadata(
    ray_cluster, password_redis, storage, instance, monkeypatch
):
    monkeypatch.setenv("TINYEXP_TEST_SECRET_REDIS_URL", password_redis)
    assert REDIS_PASSWORD in password_redis
    res = resources(storage, None)
    res["redis"] = RedisProgressResource(url=dg.EnvVar("TINYEXP_TEST_SECRET_REDIS_URL"))
    result = dg.materialize(
        [prepared_dataset, trained_model],
        instance=instance,
        resources=res,
        run_config=train_config(["train_cfg.num_epochs=1"]),
    )
    assert result.success

    # The password Redis really was the progress store...
    client = redis_client(password_redis)
    try:
        assert read_run(client, result.run_id)["status"] == "succeeded"
    finally:
        client.close()

    # ...yet the password is nowhere: event log (messages, metadata, errors), run record.
    from dagster._serdes import serialize_value

    records = instance.all_logs(result.run_id)
    shown = "progress in Redis at redis://:***@127.0.0.1"
    assert any(shown in (e.user_message or "") for e in records)
    assert REDIS_PASSWORD not in serialize_value(records)
    assert REDIS_PASSWORD not in serialize_value(instance.get_run_by_id(result.run_id))
    # ...nor in any file of the run: config.yaml, rank logs, checkpoints, trace.
    for path in storage.rglob("*"):
        if path.is_file():
            assert REDIS_PASSWORD.encode() not in path.read_bytes(), path
    # ...nor in the command line of the password-protected redis-server.
    for proc in psutil.process_iter(["cmdline"]):
        assert REDIS_PASSWORD not in " ".join(proc.info["cmdline"] or [])
