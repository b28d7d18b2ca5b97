"""Live progress end to end (issue 4, must-show 1 and 3).

1. A real `mnist_training_pipeline` run (`dagster job execute` in a subprocess, its own local Ray,
   SQLite under a temporary DAGSTER_HOME) reports progress to Redis while the test ticks
   `training_progress_sensor` against the same Dagster instance and records its
   observations, as the daemon would: `trained_model` gets observations with increasing
   epoch numbers before the run's RUN_SUCCESS.
2. Redis stopped in the middle of a run: training finishes, its checkpoint verifies, and the
   progress view and the Redis-reading sensors say Redis is unreachable.
"""

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import dagster as dg
import yaml
from dagster._core.instance.ref import InstanceRef
from loguru import logger

from tinyexp_core.checkpoint import load_checkpoint, verify_checkpoint
from tinyexp_core.config.factory import build_exp
from tinyexp_core.launchers import run_in_process
from tinyexp_core.progress import RedisProgressReporter, read_run
from tinyexp_core.services.redis_client import make_client
from tinyexp_core.services.redis_cluster import RedisClusterManager
from tinyexp_dagster.cli import main as cli_main
from tinyexp_dagster.resources import RedisProgressResource, StallSettingsResource, StorageResource
from tinyexp_dagster.sensors import stalled_training_sensor, training_progress_sensor

PIPELINE_TIMEOUT_S = 300
TICK_EVERY_S = 0.5

RUN_CONFIG = {
    "ops": {
        "mnist__trained_model": {"config": {"overrides": ["train_cfg.num_epochs=3"]}},
        # the accuracy gate is not what this test is about
        "mnist__model_evaluation": {"config": {"threshold": 0.0}},
    }
}


def _tick_and_record(
    instance: dg.DagsterInstance, cursor: str | None, resources: dict[str, Any]
) -> str | None:
    """One sensor evaluation; its observations are stored the way the daemon stores them."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    data = training_progress_sensor.evaluate_tick(context)
    for observation in data.asset_events:
        instance.report_runless_asset_event(observation)
    return data.cursor


def test_trained_model_is_observed_live_during_training_pipeline(redis_url, tmp_path):
    home, storage = tmp_path / "dagster_home", tmp_path / "storage"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RUN_CONFIG))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TINYEXP_STORAGE_ROOT": str(storage),
        "TINYEXP_REDIS_URL": redis_url,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)  # the run starts (and stops) its own local Ray
    resources = {
        "redis": RedisProgressResource(url=redis_url),
        "storage": StorageResource(root=str(storage)),
        "stalls": StallSettingsResource(),
    }
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    cursor = _tick_and_record(instance, None, resources)  # follow from the stream's end

    command = [sys.executable, "-m", "dagster", "job", "execute"]
    command += [
        "-m",
        "tinyexp_dagster.definitions",
        "-j",
        "mnist_training_pipeline",
        "-c",
        str(config),
    ]
    log_path = tmp_path / "dagster.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + PIPELINE_TIMEOUT_S
            while proc.poll() is None:
                assert time.monotonic() < deadline, f"pipeline ran over {PIPELINE_TIMEOUT_S} s"
                cursor = _tick_and_record(instance, cursor, resources)
                time.sleep(TICK_EVERY_S)
            _tick_and_record(instance, cursor, resources)  # the events of the last moments
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, log_path.read_text()[-4000:]

    [run] = instance.get_runs()
    [success] = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS
    ).records
    records = instance.fetch_observations(
        dg.AssetKey(["mnist", "trained_model"]), 100, ascending=True
    )
    ours = [
        (record.timestamp, record.asset_observation.metadata)
        for record in records.records
        if record.asset_observation.metadata["run_id"].value == run.run_id
    ]
    epochs = [(ts, meta["epoch"].value) for ts, meta in ours if "epoch" in meta]
    assert [epoch for _, epoch in epochs] == [1, 2, 3], "each epoch observed once, in order"
    before = [epoch for ts, epoch in epochs if ts < success.timestamp]
    assert before, "no epoch was observed before the run finished"
    assert ours[-1][1]["status"].value == "succeeded"
    assert all(meta["num_epochs"].value == 3 for _, meta in ours if "epoch" in meta)


def test_training_finishes_when_redis_stops_mid_run(tmp_path, digits_prepared, monkeypatch, capsys):
    run_id = f"outage-{uuid.uuid4().hex[:8]}"
    server = RedisClusterManager(num_shards=1)
    server.start()
    url = server.urls[0]
    seen_before_stop: dict[str, str] = {}
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING", format="{message}")
    original = RedisProgressReporter.checkpoint

    def checkpoint_then_stop_redis(self, *, path, epoch, best_metric=None):
        original(self, path=path, epoch=epoch, best_metric=best_metric)
        if epoch == 0:  # the first epoch's checkpoint reached Redis: now take Redis away
            seen_before_stop.update(read_run(make_client(url), self.run_id))
            server.stop()

    monkeypatch.setattr(RedisProgressReporter, "checkpoint", checkpoint_then_stop_redis)
    monkeypatch.setenv("TINYEXP_PROGRESS_URL", url)
    monkeypatch.setenv("TINYEXP_PROGRESS_RUN_ID", run_id)
    monkeypatch.setenv("TINYEXP_ASSET", "mnist/trained_model")
    overrides = [
        "launcher=mp",
        f"output_root={tmp_path / 'runs'}",
        f"run_id={run_id}",
        f"data_cfg.prepared_path={digits_prepared}",
        "train_cfg.num_epochs=3",
    ]
    try:
        summary = run_in_process(build_exp("tinyexp_core.examples.mnist_exp:Exp", overrides))
    finally:
        server.stop()
        logger.remove(sink)

    # Progress was flowing until the outage; then training carried on without it.
    assert seen_before_stop["status"] == "running"
    assert seen_before_stop["last_checkpoint"].endswith("last.pt")
    assert summary.num_epochs == 3
    assert any(f"progress store {url} unavailable" in w for w in warnings)
    verify_checkpoint(summary.checkpoints.last)
    assert load_checkpoint(summary.checkpoints.last)["epoch"] == 2

    monkeypatch.setenv("TINYEXP_REDIS_URL", url)
    capsys.readouterr()  # drop the training log
    assert cli_main(["--storage-root", str(tmp_path), "progress", run_id, "--once"]) == 3
    assert capsys.readouterr().err.startswith(f"Redis unreachable at {url}")
    resources = {
        "redis": RedisProgressResource(url=url),
        "storage": StorageResource(root=str(tmp_path / "storage")),
        "stalls": StallSettingsResource(),
    }
    instance = dg.DagsterInstance.ephemeral()
    for sensor in (training_progress_sensor, stalled_training_sensor):
        context = dg.build_sensor_context(instance=instance, cursor=None, resources=resources)
        message = sensor.evaluate_tick(context).skip_message
        assert message.startswith(f"Redis unreachable at {url}"), (sensor.name, message)
