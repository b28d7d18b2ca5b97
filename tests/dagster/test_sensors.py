"""Sensors against a real Redis (the `redis_url` fixture) and a real Dagster instance.

Every tick goes through `build_sensor_context` with an explicit cursor, the way the daemon
calls a sensor: exactly-once requests, cursor advance, skip reasons and Redis outages.
The Redis server may be shared, so assertions only look at this test's run ids.
"""

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import redis
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.launcher import RunLauncher
from dagster._serdes import ConfigurableClass

from tests.hung_process import WAIT_FUNCTION, hung_rank
from tinyexp_core.config.exceptions import ConfigValueError, InvalidRedisUrlError
from tinyexp_core.progress import (
    ACTIVE_RUNS_KEY,
    EVENTS_STREAM,
    RedisProgressReporter,
    active_run_ids,
    ranks_key,
    read_events,
    read_run,
    run_key,
    stacks_key,
)
from tinyexp_core.progress.stacks import RankStack, StackReport
from tinyexp_core.services.lifecycle import free_port
from tinyexp_core.services.redis_client import make_client
from tinyexp_core.services.redis_cluster import RedisClusterManager
from tinyexp_dagster import default_resources
from tinyexp_dagster.assets.training import RESUME_RUN_DIR_TAG
from tinyexp_dagster.definitions import defs
from tinyexp_dagster.resources import RedisProgressResource, StallSettingsResource, StorageResource
from tinyexp_dagster.sensors import (
    STALLED_AT_TAG,
    STALLED_RUN_TAG,
    evaluation_key,
    stalled_training_sensor,
    training_progress_sensor,
)

NO_NEW = "No new materialization events found for asset key AssetKey(['mnist', '{}'])"  # Dagster's
retrain_on_new_data_sensor = defs.resolve_sensor_def("mnist_retrain_on_new_data_sensor")
metric_regression_sensor = defs.resolve_sensor_def("mnist_metric_regression_sensor")
PREPARED = dg.AssetKey(["mnist", "prepared_dataset"])
TRAINED = dg.AssetKey(["mnist", "trained_model"])
EVALUATION = dg.AssetKey(["mnist", "model_evaluation"])
STALE_S = 1000.0  # heartbeat age of a stalled run in these tests (threshold: 60 s)


class TerminatingRunLauncher(RunLauncher, ConfigurableClass):
    """A run launcher whose `terminate` works (like the default one under `dagster dev`):
    it reports the run canceled and records the call. Launching is not needed here."""

    terminated: list[str] = []

    def __init__(self, inst_data: Any = None) -> None:
        self._inst_data = inst_data

    @property
    def inst_data(self) -> Any:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> "TerminatingRunLauncher":
        return cls(inst_data=inst_data)

    def launch_run(self, context: Any) -> None:
        raise NotImplementedError("these tests never launch runs")

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        self._instance.report_run_canceled(run)
        TerminatingRunLauncher.terminated.append(run_id)
        return True


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = make_client(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def track(client: redis.Redis) -> Iterator[Callable[[str], str]]:
    """Registers run ids whose hashes, set membership and events go afterwards."""
    made: list[str] = []

    def add(run_id: str) -> str:
        made.append(run_id)
        return run_id

    yield add
    for rid in made:
        client.delete(run_key(rid))
        client.srem(ACTIVE_RUNS_KEY, rid)
    stale = [eid for eid, f in read_events(client, count=100_000) if f.get("run_id") in made]
    if stale:
        client.xdel(EVENTS_STREAM, *stale)


@pytest.fixture
def new_run_id(track: Callable[[str], str]) -> Callable[[], str]:
    """Makes unique run ids (cleaned up like `track`'s)."""
    return lambda: track(str(uuid.uuid4()))


@pytest.fixture
def instance() -> dg.DagsterInstance:
    """A real Dagster instance (in memory: run and event storage as the daemon sees them)."""
    return dg.DagsterInstance.ephemeral()


@pytest.fixture
def resources(redis_url: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "redis": RedisProgressResource(url=redis_url),
        "storage": StorageResource(root=str(tmp_path / "storage")),
        "stalls": StallSettingsResource(after_s=60),
    }


@pytest.fixture
def down_resources(tmp_path: Path) -> dict[str, Any]:
    """Resources whose Redis URL is a free port: nothing listens there."""
    return {
        "redis": RedisProgressResource(url=f"redis://127.0.0.1:{free_port()}/0"),
        "storage": StorageResource(root=str(tmp_path / "storage")),
        "stalls": StallSettingsResource(after_s=60),
    }


@pytest.fixture(scope="module")
def pipeline_job() -> dg.JobDefinition:
    return defs.resolve_job_def("mnist_training_pipeline")


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    cursor: str | None = None,
    resources: dict[str, Any] | None = None,
) -> Any:
    """One evaluation as the daemon does it; returns run requests, skip message, cursor.
    Without a `stalls` resource the default settings are the deployment's."""
    resources = {"stalls": StallSettingsResource(), **(resources or {})}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return sensor.evaluate_tick(context)


def stream_end(client: redis.Redis) -> str:
    last = client.xrevrange(EVENTS_STREAM, count=1)
    return last[0][0] if last else "0-0"


def ours(data: Any, run_id: str) -> list[dg.AssetObservation]:
    return [o for o in data.asset_events if o.metadata["run_id"].value == run_id]


def start_run(
    redis_url: str, run_id: str, *, heartbeat: float, asset: str = "mnist/trained_model"
) -> RedisProgressReporter:
    """A run in Redis: registered, at epoch 0 step 5 with an ETA, last heartbeat at
    `heartbeat` (the reporter's clock stays there)."""
    now = [heartbeat - 1.0]
    rep = RedisProgressReporter(redis_url, run_id, throttle_s=0.0, clock=lambda: now[0])
    rep.start(asset=asset, num_epochs=3, num_steps=10)
    rep.step(epoch=0, step=3, loss=1.5, lr=0.1, samples_per_s=100.0)
    now[0] = heartbeat
    rep.step(epoch=0, step=5, loss=1.25, lr=0.1, samples_per_s=100.0)
    return rep


def dagster_run(
    instance: dg.DagsterInstance,
    job: dg.JobDefinition,
    status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED,
    **kwargs: Any,
) -> dg.DagsterRun:
    config = {
        "ops": {"mnist__trained_model": {"config": {"overrides": ["train_cfg.num_epochs=3"]}}}
    }
    return instance.create_run_for_job(job, run_config=config, status=status, **kwargs)


# ---------------------------------------------------------------- training_progress_sensor


def test_progress_first_tick_follows_from_the_stream_end(
    redis_url, client, instance, resources, new_run_id
):
    rid = new_run_id()
    rep = start_run(redis_url, rid, heartbeat=time.time())
    rep.epoch_end(epoch=0, loss=1.0, metrics={"val_accuracy": 0.5})
    data = tick(training_progress_sensor, instance, None, resources)
    assert not data.asset_events
    assert "earlier events are not replayed" in data.skip_message
    assert data.cursor == stream_end(client)


def test_progress_events_become_observations_once(
    redis_url, client, instance, resources, new_run_id
):
    rid, other = new_run_id(), new_run_id()
    cursor = stream_end(client)
    rep = start_run(redis_url, rid, heartbeat=time.time())
    rep.epoch_end(epoch=0, loss=1.25, metrics={"val_accuracy": 0.5, "best_metric": 0.5})
    rep.checkpoint(path="/runs/x/last.pt", epoch=0, best_metric=0.5)
    standalone = start_run(redis_url, other, heartbeat=time.time(), asset="")
    standalone.epoch_end(epoch=0, loss=1.0, metrics={})

    first = tick(training_progress_sensor, instance, cursor, resources)
    [obs] = ours(first, rid)
    assert not ours(first, other), "a run of no trained_model asset is not observed"
    assert obs.asset_key == dg.AssetKey(["mnist", "trained_model"])
    meta = {k: v.value for k, v in obs.metadata.items()}
    assert meta["epoch"] == 1 and meta["num_epochs"] == 3 and meta["event"] == "epoch_end"
    assert meta["train_loss"] == 1.25 and meta["val_accuracy"] == 0.5
    assert meta["best_metric"] == 0.5 and meta["last_checkpoint"] == "/runs/x/last.pt"
    assert meta["eta_s"] >= 0, "a running run's observation carries its ETA"
    assert first.cursor == stream_end(client)

    rep.epoch_end(epoch=1, loss=0.75, metrics={"val_accuracy": 0.75})
    rep.finish("succeeded")
    second = tick(training_progress_sensor, instance, first.cursor, resources)
    epoch_2, final = ours(second, rid)  # epoch 1 is not observed again
    assert epoch_2.metadata["epoch"].value == 2
    assert final.metadata["status"].value == "succeeded"
    assert "epoch" not in final.metadata and "eta_s" not in final.metadata

    again = tick(training_progress_sensor, instance, second.cursor, resources)
    assert not again.asset_events
    assert again.skip_message == f"no new progress events after stream id {second.cursor}"
    assert again.cursor == second.cursor


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _caught_up(cursor: str, last: str) -> bool:
    """Nothing waits in the backlog and the stream is read up to `last`."""
    from tinyexp_dagster.sensors.progress_backlog import Backlog

    backlog = Backlog.parse(cursor)
    return not backlog.pending and _stream_id(backlog.stream) >= _stream_id(last)


def test_a_backlog_over_the_cap_is_worked_off_over_ticks_without_loss_or_repeat(
    redis_url, client, instance, resources, new_run_id, monkeypatch
):
    """More runs to observe than one tick may emit: each tick emits at most the cap, the
    rest waits in the cursor's backlog, a run's epoch ends are folded into its newest
    (counted), and after a few ticks every run's epoch ends are accounted for once and
    every outcome observed once."""
    from tinyexp_dagster.sensors import training_progress

    cap = 3
    monkeypatch.setattr(training_progress, "MAX_OBSERVATIONS_PER_TICK", cap)
    cursor = stream_end(client)
    burst, *runs = [new_run_id() for _ in range(6)]
    reporters = {rid: start_run(redis_url, rid, heartbeat=time.time()) for rid in runs}
    reporters[burst] = start_run(redis_url, burst, heartbeat=time.time())
    for epoch in range(3):  # one run's epoch ends back to back: folded into the newest
        reporters[burst].epoch_end(epoch=epoch, loss=1.0 / (epoch + 1), metrics={})
    for epoch in range(2):  # the others' interleaved: folded too, while they wait
        for rid in runs:
            reporters[rid].epoch_end(epoch=epoch, loss=0.5, metrics={"val_accuracy": 0.5})
    for rid in [burst, *runs]:
        reporters[rid].finish("succeeded")
    last_ours = stream_end(client)
    expected_epoch_ends = {burst: 3, **{rid: 2 for rid in runs}}
    wanted = 2 * (1 + len(runs))  # per run: its newest epoch and its outcome

    seen: dict[str, list[tuple[str, int | None, int]]] = {rid: [] for rid in expected_epoch_ends}
    ticks = 0
    while not _caught_up(cursor, last_ours):
        assert ticks < 40, f"backlog not worked off after {ticks} ticks (cursor {cursor})"
        data = tick(training_progress_sensor, instance, cursor, resources)
        assert len(data.asset_events) <= cap, "a tick emitted more observations than the cap"
        assert data.cursor != cursor, "a tick with work must move the cursor"
        for obs in data.asset_events:
            rid = obs.metadata["run_id"].value
            if rid in seen:
                meta = {k: v.value for k, v in obs.metadata.items()}
                seen[rid].append(
                    (meta["event"], meta.get("epoch"), meta.get("epoch_ends_folded_in", 0))
                )
        cursor, ticks = data.cursor, ticks + 1
    assert ticks >= -(-wanted // cap), "the cap did not split the backlog over ticks"

    for rid, observed in seen.items():
        assert len(observed) == len(set(observed)), f"{rid}: an observation repeated"
        epochs = [(epoch, folded) for event, epoch, folded in observed if event == "epoch_end"]
        assert sum(1 + folded for _, folded in epochs) == expected_epoch_ends[rid], observed
        assert max(epoch for epoch, _ in epochs) == expected_epoch_ends[rid], "newest epoch"
        assert [e for e, _, _ in observed].count("finished") == 1, observed
    assert seen[burst] == [("epoch_end", 3, 2), ("finished", None, 0)]
    again = tick(training_progress_sensor, instance, last_ours, resources)
    assert not [o for o in again.asset_events if o.metadata["run_id"].value in seen]


@pytest.mark.timeout(600)
def test_a_backlog_of_1000_active_runs_empties_with_ticks_bounded_in_time(
    redis_url, client, instance, resources, new_run_id
):
    """Issue 24, item 6: 1000 active runs, each with two epoch ends and an outcome in the
    stream. Every tick reads within its budget and emits at most the cap; the backlog (at
    most two slots per run) empties, every run's outcome observed once."""
    from tinyexp_dagster.sensors import training_progress as tp

    cursor = stream_end(client)
    runs = [new_run_id() for _ in range(1000)]
    for rid in runs:
        rep = RedisProgressReporter(redis_url, rid, throttle_s=0.0)
        rep.start(asset="mnist/trained_model", num_epochs=2, num_steps=10)
        for epoch in range(2):
            rep.epoch_end(epoch=epoch, loss=0.5, metrics={})
        rep.finish("succeeded")
        rep.close()
    last_ours = stream_end(client)
    outcomes: dict[str, int] = dict.fromkeys(runs, 0)
    ticks, slowest = 0, 0.0
    bound = -(-2 * len(runs) // tp.MAX_OBSERVATIONS_PER_TICK) + 2
    while not _caught_up(cursor, last_ours):
        assert ticks < bound, f"backlog not empty after {ticks} ticks"
        started = time.monotonic()
        data = tick(training_progress_sensor, instance, cursor, resources)
        slowest = max(slowest, time.monotonic() - started)
        assert len(data.asset_events) <= tp.MAX_OBSERVATIONS_PER_TICK
        for obs in data.asset_events:
            rid = obs.metadata["run_id"].value
            if rid in outcomes and obs.metadata["event"].value == "finished":
                outcomes[rid] += 1
        cursor, ticks = data.cursor, ticks + 1
    assert set(outcomes.values()) == {1}, "every run's outcome observed exactly once"
    assert ticks >= 2 * len(runs) // tp.MAX_OBSERVATIONS_PER_TICK, "the cap held every tick"
    # The read budget, plus building at most the cap's observations (generous: shared CPUs).
    assert slowest < tp.READ_BUDGET_S + 5.0, slowest


def test_progress_without_a_store_or_with_redis_down(instance, down_resources, tmp_path):
    no_store = {"redis": RedisProgressResource(), "storage": StorageResource(root=str(tmp_path))}
    data = tick(training_progress_sensor, instance, "0-0", no_store)
    assert data.skip_message.startswith("no progress store yet")

    down = tick(training_progress_sensor, instance, "0-0", down_resources)
    url = down_resources["redis"].url
    assert down.skip_message.startswith(f"Redis unreachable at {url}: ConnectionError")
    assert down.cursor == "0-0" and not down.asset_events, "the cursor stays where it was"


def test_a_dead_embedded_server_is_reported_unreachable(instance, tmp_path):
    """The embedded server's address file is there but nothing answers: unreachable, not
    'no store'."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "redis.url").write_text(url + "\n")
    embedded = {"redis": RedisProgressResource(), "storage": StorageResource(root=str(tmp_path))}
    for sensor in (training_progress_sensor, stalled_training_sensor):
        data = tick(sensor, instance, None, embedded)
        assert data.skip_message.startswith(f"Redis unreachable at {url}"), sensor.name


def test_password_is_never_shown(instance, tmp_path):
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    res = {"redis": RedisProgressResource(url=url), "storage": StorageResource(root=str(tmp_path))}
    data = tick(training_progress_sensor, instance, "0-0", res)
    assert "Redis unreachable at redis://:***@127.0.0.1" in data.skip_message
    assert "hunter2" not in data.skip_message


@pytest.mark.parametrize("password", ["", "wrong"])
def test_rejected_credentials_fail_the_tick_instead_of_skipping(instance, tmp_path, password):
    """NOAUTH (no password) and WRONGPASS are configuration errors, never an outage."""
    with RedisClusterManager(password="s3cret", data_dir=str(tmp_path / "redis-auth")) as server:
        auth = f":{password}@" if password else ""
        url = f"redis://{auth}127.0.0.1:{server.ports[0]}/0"
        storage = StorageResource(root=str(tmp_path))
        res = {"redis": RedisProgressResource(url=url), "storage": storage}
        for sensor in (training_progress_sensor, stalled_training_sensor):
            with pytest.raises(InvalidRedisUrlError, match="authentication failed") as info:
                tick(sensor, instance, "0-0" if sensor is training_progress_sensor else None, res)
            assert "wrong" not in str(info.value).replace("wrong number", "")


# ---------------------------------------------------------------- stalled_training_sensor


@pytest.fixture
def stall_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No stall setting comes from the environment: the `stalls` resource decides."""
    monkeypatch.setenv("TINYEXP_STALL_AFTER_S", "1")
    monkeypatch.setenv("TINYEXP_STALL_ACTION", "terminate")
    return monkeypatch


def test_stalled_run_is_marked_and_reported_once(
    redis_url, client, track, instance, resources, pipeline_job, stall_env
):
    run = dagster_run(instance, pipeline_job)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
    heartbeat = read_run(client, run.run_id)["heartbeat"]
    first = tick(stalled_training_sensor, instance, None, resources)
    assert read_run(client, run.run_id)["status"] == "stalled"
    assert f"run {run.run_id} stalled" in first.skip_message
    assert not first.run_requests, "report mode requests nothing"
    assert json.loads(first.cursor)["stalls"] == [f"stall:{run.run_id}:{heartbeat}"]

    second = tick(stalled_training_sensor, instance, first.cursor, resources)
    assert f"run {run.run_id}" not in second.skip_message, "one report per stall"
    assert second.cursor == first.cursor and not second.run_requests


def test_fresh_heartbeat_is_not_a_stall_and_a_stalled_run_recovers(
    redis_url, client, track, instance, resources, pipeline_job, stall_env
):
    run = dagster_run(instance, pipeline_job)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time())
    data = tick(stalled_training_sensor, instance, None, resources)
    assert read_run(client, run.run_id)["status"] == "running"
    assert "none of this instance stalled (threshold 60 s)" in data.skip_message
    assert json.loads(data.cursor) == {"stalls": []}

    client.hset(run_key(run.run_id), "status", "stalled")  # marked by an earlier tick
    tick(stalled_training_sensor, instance, data.cursor, resources)
    assert read_run(client, run.run_id)["status"] == "running"


@pytest.mark.parametrize(
    ("dagster_status", "final"),
    [(dg.DagsterRunStatus.FAILURE, "failed"), (dg.DagsterRunStatus.SUCCESS, "succeeded")],
)
def test_runs_dagster_shows_as_ended_leave_the_active_set(
    redis_url, client, track, instance, resources, pipeline_job, stall_env, dagster_status, final
):
    run = dagster_run(instance, pipeline_job, status=dagster_status)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
    data = tick(stalled_training_sensor, instance, None, resources)
    progress = read_run(client, run.run_id)
    assert progress["status"] == final, "its real final status, not stalled"
    assert run.run_id not in active_run_ids(client)
    assert client.ttl(run_key(run.run_id)) > 0
    assert f"run {run.run_id} ended ({final})" in data.skip_message
    assert bool(progress["error"]) == (final == "failed")


def test_runs_unknown_to_the_instance_are_left_alone(
    redis_url, client, instance, resources, new_run_id, stall_env
):
    rid = new_run_id()  # a standalone CLI run, or another deployment's
    start_run(redis_url, rid, heartbeat=time.time() - STALE_S)
    tick(stalled_training_sensor, instance, None, resources)
    assert read_run(client, rid)["status"] == "running"
    assert rid in active_run_ids(client)


def test_redis_down_is_not_a_stall(
    redis_url, client, track, instance, down_resources, pipeline_job, stall_env
):
    run = dagster_run(instance, pipeline_job)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
    data = tick(stalled_training_sensor, instance, None, down_resources)
    assert data.skip_message.startswith("Redis unreachable at redis://127.0.0.1:")
    assert "stalled" not in data.skip_message
    assert not data.run_requests and data.cursor is None
    assert read_run(client, run.run_id)["status"] == "running"


def test_terminate_action_requests_one_resume_run(
    redis_url, client, track, resources, pipeline_job, stall_env
):
    resources["stalls"] = StallSettingsResource(after_s=60, action="terminate")
    launcher = {"module": __name__, "class": TerminatingRunLauncher.__name__}
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        run = dagster_run(instance, pipeline_job)
        track(run.run_id)
        start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
        heartbeat = read_run(client, run.run_id)["heartbeat"]
        first = tick(stalled_training_sensor, instance, None, resources)
        [request] = first.run_requests
        assert TerminatingRunLauncher.terminated[-1] == run.run_id
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
        assert request.run_key == f"stall:{run.run_id}:{heartbeat}"
        assert request.job_name is None  # the stalled pipeline's assets, selected by key
        assert set(request.asset_selection) == {
            dg.AssetKey(["mnist", a])
            for a in ("trained_model", "model_checkpoint", "model_evaluation")
        }
        assert request.tags[RESUME_RUN_DIR_TAG] == run.run_id
        assert request.tags[STALLED_RUN_TAG] == run.run_id
        assert request.tags[STALLED_AT_TAG] == "0:5", "where it hung, for the same-step rule"
        train = request.run_config["ops"]["mnist__trained_model"]["config"]
        assert train == {"overrides": ["train_cfg.num_epochs=3"], "resume": "auto"}
        assert set(request.run_config["ops"]) <= {
            "mnist__trained_model",
            "mnist__model_checkpoint",
            "mnist__model_evaluation",
        }

        again = tick(stalled_training_sensor, instance, first.cursor, resources)
        assert not again.run_requests, "one request per stall"


def test_no_resume_when_the_run_cannot_be_terminated(
    redis_url, client, track, resources, pipeline_job, stall_env
):
    """DagsterInstance.ephemeral()'s run launcher cannot terminate: two trainers must not
    share a run directory, so nothing is requested."""
    resources["stalls"] = StallSettingsResource(after_s=60, action="terminate")
    instance = dg.DagsterInstance.ephemeral()
    run = dagster_run(instance, pipeline_job)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
    data = tick(stalled_training_sensor, instance, None, resources)
    assert not data.run_requests
    assert read_run(client, run.run_id)["status"] == "stalled"
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED


def _engine_events(instance: dg.DagsterInstance, run_id: str) -> list[Any]:
    return [
        r.dagster_event
        for r in instance.all_logs(run_id)
        if r.dagster_event is not None
        and r.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
    ]


def test_a_stall_records_every_ranks_stack_on_the_run(
    redis_url, client, track, instance, resources, pipeline_job, stall_env, tmp_path
):
    """Two real rank processes (one SIGSTOPped, one missing from a world of 3): the engine
    event on the run holds one stack per reachable rank and names the missing one; the
    progress store holds the same record."""
    import os
    import signal

    run = dagster_run(instance, pipeline_job)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
    client.hset(run_key(run.run_id), "world_size", "3")
    try:
        with (
            hung_rank(redis_url, run.run_id, 0, tmp_path),
            hung_rank(redis_url, run.run_id, 1, tmp_path) as stopped,
        ):
            os.kill(stopped.pid, signal.SIGSTOP)
            data = tick(stalled_training_sensor, instance, None, resources)
    finally:
        client.delete(ranks_key(run.run_id))
    assert f"run {run.run_id} stalled" in data.skip_message
    [event] = [e for e in _engine_events(instance, run.run_id) if "every rank's stack" in e.message]
    assert "at epoch 0 step 5" in event.message and "stacks of 2/3 rank(s)" in event.message
    meta = {k: v.value for k, v in event.event_specific_data.metadata.items()}
    assert meta["position"] == "epoch 0 step 5"
    for rank in (0, 1):
        assert WAIT_FUNCTION in meta[f"rank_{rank}"], meta[f"rank_{rank}"]
    assert f"pid {stopped.pid}, state T (stopped)): via py-spy --nonblocking" in meta["rank_1"]
    assert "rank 2" in meta["collected"] and "never registered" in meta["rank_2"]
    record = json.loads(client.get(stacks_key(run.run_id)))
    client.delete(stacks_key(run.run_id))
    assert (record["epoch"], record["step"], record["verdict"]) == (0, 5, "")
    assert [r["rank"] for r in record["report"]["ranks"]] == [0, 1, 2]
    assert WAIT_FUNCTION in record["report"]["ranks"][1]["stack"]


FAKE_STACK = "Thread 7 (idle): MainThread\n    allreduce (fake_gloo.py:12)"


@pytest.fixture
def fake_stacks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace py-spy with a canned report (one rank); records the calls."""
    calls: list[Any] = []

    def collect(ranks, *, world_size=None, budget_s=0.0):
        calls.append((list(ranks), world_size))
        rank = RankStack(0, "host-a", 123, "py-spy", FAKE_STACK)
        return StackReport(ranks=[rank], collected_at=time.time(), elapsed_s=0.1, host="host-a")

    monkeypatch.setattr("tinyexp_dagster.sensors.hang.collect_stacks", collect)
    return calls


@pytest.mark.parametrize("first_stall", ["0:5", "0:3"], ids=["same step", "another step"])
def test_a_resume_run_hanging_at_the_same_step_again_is_failed_not_resumed(
    redis_url, client, track, resources, pipeline_job, stall_env, fake_stacks, first_stall
):
    """The resume run of a run that stalled at `first_stall` stalls at epoch 0 step 5: at the
    same step it is terminated and failed (Dagster and the progress store name the step and
    carry the stacks), with no third attempt; at another step it is resumed again."""
    resources["stalls"] = StallSettingsResource(after_s=60, action="terminate")
    launcher = {"module": __name__, "class": TerminatingRunLauncher.__name__}
    tags = {STALLED_RUN_TAG: "first-run", STALLED_AT_TAG: first_stall, RESUME_RUN_DIR_TAG: "r"}
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        run = dagster_run(instance, pipeline_job, tags=tags)
        track(run.run_id)
        start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
        data = tick(stalled_training_sensor, instance, None, resources)
        assert fake_stacks, "stacks are collected before acting"
        assert TerminatingRunLauncher.terminated[-1] == run.run_id
        progress = read_run(client, run.run_id)
        client.delete(stacks_key(run.run_id))
        if first_stall != "0:5":
            [request] = data.run_requests
            assert request.tags[STALLED_AT_TAG] == "0:5"
            assert request.tags[STALLED_RUN_TAG] == run.run_id
            assert progress["status"] == "stalled"
            return
        assert not data.run_requests, "no third attempt"
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        verdict = f"run {run.run_id} stalled again at epoch 0 step 5, where run first-run"
        failures = [
            r.dagster_event.message
            for r in instance.all_logs(run.run_id)
            if r.dagster_event is not None
            and r.dagster_event.event_type == DagsterEventType.RUN_FAILURE
        ]
        assert any(verdict in m for m in failures), failures
        [event] = [
            e for e in _engine_events(instance, run.run_id) if "every rank's stack" in e.message
        ]
        error = event.event_specific_data.error
        assert verdict in event.message and error.cls_name == "RepeatedStall"
        assert "allreduce (fake_gloo.py:12)" in "".join(error.stack)
        assert "allreduce (fake_gloo.py:12)" in event.event_specific_data.metadata["rank_0"].value
        assert progress["status"] == "failed"
        assert verdict in progress["error"] and "allreduce (fake_gloo.py:12)" in progress["error"]
        assert run.run_id not in active_run_ids(client)
        assert client.ttl(run_key(run.run_id)) > 0


def test_stall_settings_are_a_resource_read_from_the_environment_once(monkeypatch):
    monkeypatch.delenv("TINYEXP_STALL_AFTER_S", raising=False)
    monkeypatch.delenv("TINYEXP_STALL_ACTION", raising=False)
    settings = StallSettingsResource.from_env()
    assert (settings.after_s, settings.action) == (600.0, "report")
    assert default_resources()["stalls"].after_s == 600.0
    monkeypatch.setenv("TINYEXP_STALL_AFTER_S", "90")
    monkeypatch.setenv("TINYEXP_STALL_ACTION", "terminate")
    settings = default_resources()["stalls"]
    assert (settings.after_s, settings.action) == (90.0, "terminate")
    for name, bad in [
        ("TINYEXP_STALL_AFTER_S", "soon"),
        ("TINYEXP_STALL_AFTER_S", "-5"),
        ("TINYEXP_STALL_ACTION", "kill"),
    ]:
        with monkeypatch.context() as env:
            env.setenv(name, bad)
            with pytest.raises(ConfigValueError, match=name):
                StallSettingsResource.from_env()
    with pytest.raises(Exception, match="after_s"):
        StallSettingsResource(after_s=0)


# ---------------------------------------------------------------- mnist_retrain_on_new_data_sensor


def prepared(instance: dg.DagsterInstance, version: str) -> None:
    """A prepared_dataset materialization as the asset records it (DataVersion + metadata)."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            PREPARED,
            metadata={"data_version": version},
            tags={"dagster/data_version": version},
        )
    )


def latest_storage_id(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    return instance.fetch_materializations(key, limit=1).records[0].storage_id


def test_retrain_once_per_new_data_version(instance):
    data = tick(retrain_on_new_data_sensor, instance)
    assert data.skip_message == NO_NEW.format("prepared_dataset")

    requests = []
    prepared(instance, "v1")
    first = tick(retrain_on_new_data_sensor, instance)
    requests += first.run_requests
    assert [r.run_key for r in first.run_requests] == ["data:v1"]
    assert first.cursor == str(latest_storage_id(instance, PREPARED))

    # Dagster's asset-sensor cursor: nothing new, so the tick skips and keeps it.
    second = tick(retrain_on_new_data_sensor, instance, first.cursor)
    requests += second.run_requests
    assert second.skip_message == NO_NEW.format("prepared_dataset")
    assert second.cursor == first.cursor

    prepared(instance, "v1")  # the same data, prepared again
    third = tick(retrain_on_new_data_sensor, instance, second.cursor)
    requests += third.run_requests
    assert third.skip_message == "mnist/prepared_dataset rematerialized with the same version v1"
    assert int(third.cursor) > int(second.cursor)

    prepared(instance, "v2")
    fourth = tick(retrain_on_new_data_sensor, instance, third.cursor)
    requests += fourth.run_requests
    assert [r.run_key for r in requests] == ["data:v1", "data:v2"]
    assert fourth.run_requests[0].tags["tinyexp/data_version"] == "v2"
    assert retrain_on_new_data_sensor.job_name == "mnist_retrain_job"


def test_no_retrain_for_data_a_training_run_prepared(instance, pipeline_job):
    """mnist_training_pipeline prepares and trains in one run: its new data version is
    trained on already (or about to be), both mid-run and after trained_model exists."""
    run = dagster_run(instance, pipeline_job)
    materialization = dg.AssetMaterialization(
        PREPARED, metadata={"data_version": "v3"}, tags={"dagster/data_version": "v3"}
    )
    event = DagsterEvent(
        event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
        job_name=run.job_name,
        event_specific_data=StepMaterializationData(materialization),
    )
    instance.report_dagster_event(event, run_id=run.run_id, log_level=logging.INFO)
    data = tick(retrain_on_new_data_sensor, instance)
    assert not data.run_requests
    assert data.skip_message == f"data version v3 came from run {run.run_id}, which trains"

    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            TRAINED, tags={"dagster/input_data_version/mnist/prepared_dataset": "v4"}
        )
    )
    prepared(instance, "v4")
    data = tick(retrain_on_new_data_sensor, instance, data.cursor)
    assert data.skip_message == "mnist/trained_model is already trained on data version v4"


def test_another_pipelines_data_does_not_trigger_this_one(instance):
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            dg.AssetKey(["tabular", "prepared_dataset"]),
            tags={"dagster/data_version": "t1"},
        )
    )
    data = tick(retrain_on_new_data_sensor, instance)
    assert not data.run_requests
    assert data.skip_message == NO_NEW.format("prepared_dataset")


# ---------------------------------------------------------------- mnist_metric_regression_sensor


def evaluation(instance: dg.DagsterInstance, accuracy: float | None) -> int:
    metadata = {"split": "test"} if accuracy is None else {"accuracy": accuracy, "split": "test"}
    instance.report_runless_asset_event(dg.AssetMaterialization(EVALUATION, metadata=metadata))
    return instance.fetch_materializations(EVALUATION, limit=1).records[0].storage_id


def key_of(instance: dg.DagsterInstance, storage_id: int) -> str:
    """The sensor's name for the evaluation stored under `storage_id`."""
    records_filter = dg.AssetRecordsFilter(asset_key=EVALUATION, storage_ids=[storage_id])
    [record] = instance.fetch_materializations(records_filter, limit=1).records
    return evaluation_key(record.event_log_entry)


def test_metric_regression_requests_once_per_evaluation(instance):
    """The mnist pipeline's threshold (defs.yaml): accuracy >= 0.9."""
    assert tick(metric_regression_sensor, instance).skip_message == (
        NO_NEW.format("model_evaluation")
    )
    good = evaluation(instance, 0.95)
    data = tick(metric_regression_sensor, instance)
    assert data.skip_message == "accuracy 0.9500 >= threshold 0.9000"
    assert data.cursor == str(good)

    bad = evaluation(instance, 0.5)
    first = tick(metric_regression_sensor, instance, data.cursor)
    assert [r.run_key for r in first.run_requests] == [f"metric:{key_of(instance, bad)}"]
    assert first.cursor == str(bad)
    second = tick(metric_regression_sensor, instance, first.cursor)
    assert not second.run_requests
    assert second.skip_message == NO_NEW.format("model_evaluation")
    assert second.cursor == first.cursor

    missing = evaluation(instance, None)
    third = tick(metric_regression_sensor, instance, second.cursor)
    assert third.skip_message == (
        f"mnist/model_evaluation {key_of(instance, missing)} has no accuracy metadata"
    )


def test_no_retrain_loop_after_a_retrain_this_sensor_requested(instance):
    @dg.asset(key=EVALUATION)
    def stub_evaluation() -> dg.Output[dict]:
        return dg.Output({}, metadata={"accuracy": 0.5})

    result = dg.materialize(
        [stub_evaluation],
        instance=instance,
        tags={"dagster/sensor_name": "mnist_metric_regression_sensor"},
    )
    data = tick(metric_regression_sensor, instance)
    assert not data.run_requests
    assert data.skip_message == (
        f"accuracy 0.5000 fails threshold 0.9000 after the retrain this sensor requested "
        f"(run {result.run_id}); not retraining again"
    )


def test_lower_is_better_for_a_min_metric(instance):
    """A regressor's rmse: above the threshold is the regression."""
    from tinyexp_dagster import pipeline_defs

    tabular = pipeline_defs(
        "tabular", "tinyexp_core.examples.tabular_exp:Exp", metric_threshold=60.0
    )
    [sensor] = [s for s in tabular.sensors if s.name == "tabular_metric_regression_sensor"]
    key = dg.AssetKey(["tabular", "model_evaluation"])
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={"rmse": 50.0}))
    good = tick(sensor, instance)
    assert good.skip_message == "rmse 50.0000 <= threshold 60.0000"
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={"rmse": 70.0}))
    bad = tick(sensor, instance, good.cursor)
    [request] = bad.run_requests
    assert request.tags["tinyexp/rmse"] == "70.0000"
    assert sensor.job_name == "tabular_retrain_job"
