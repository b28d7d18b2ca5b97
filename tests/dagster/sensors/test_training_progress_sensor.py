"""training_progress_sensor against a real Redis and a real Dagster instance.

Exactly-once observations, cursor advance and its backlog, skip reasons and Redis outages
(the outage tests also tick stalled_training_sensor). Assertions only look at this test's
run ids: the Redis server may be shared.
"""

import time
from typing import Any

import dagster as dg
import pytest
import redis

from tests.dagster.sensors.support import start_run, tick
from tinyexp_core.config.exceptions import InvalidRedisUrlError
from tinyexp_core.progress import EVENTS_STREAM, RedisProgressReporter
from tinyexp_core.services.lifecycle import free_port
from tinyexp_core.services.redis_cluster import RedisClusterManager
from tinyexp_dagster.resources import RedisProgressResource, StorageResource
from tinyexp_dagster.sensors import stalled_training_sensor, training_progress_sensor


def stream_end(client: redis.Redis) -> str:
    last = client.xrevrange(EVENTS_STREAM, count=1)
    return last[0][0] if last else "0-0"


def ours(data: Any, run_id: str) -> list[dg.AssetObservation]:
    return [o for o in data.asset_events if o.metadata["run_id"].value == run_id]


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
