"""Progress reporting against a real Redis (the `redis_url` fixture of tests/conftest.py)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from loguru import logger

from tinyexp_core.config.exceptions import (
    ConfigValueError,
    InvalidRedisUrlError,
    InvalidRunStatusError,
)
from tinyexp_core.progress import (
    ACTIVE_RUNS_KEY,
    EVENTS_STREAM,
    RUN_FIELDS,
    STATUSES,
    NullProgressReporter,
    ProgressReporter,
    RedisProgressReporter,
    RunProgress,
    active_run_ids,
    build_progress_reporter,
    mark_status,
    new_run_id,
    parse_number,
    read_events,
    read_progress,
    read_run,
    read_runs,
    run_key,
    write_run_sweep,
)
from tinyexp_core.services.lifecycle import free_port
from tinyexp_core.services.redis_client import make_client
from tinyexp_core.services.redis_cluster import RedisClusterManager


class FakeClock:
    """A settable clock, so throttling and backoff are tested without sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = make_client(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def run_id(client: redis.Redis) -> Iterator[str]:
    """A fresh run id; its hash, set membership and events are removed afterwards."""
    rid = f"test-{uuid.uuid4().hex[:12]}"
    yield rid
    client.delete(run_key(rid))
    client.srem(ACTIVE_RUNS_KEY, rid)
    stale = [eid for eid, fields in read_events(client, count=100_000) if fields["run_id"] == rid]
    if stale:
        client.xdel(EVENTS_STREAM, *stale)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def log_messages() -> Iterator[list[str]]:
    messages: list[str] = []
    handler = logger.add(lambda m: messages.append(str(m)), level="DEBUG", format="{message}")
    yield messages
    logger.remove(handler)


def _cursor(client: redis.Redis) -> str:
    last = client.xrevrange(EVENTS_STREAM, count=1)
    return last[0][0] if last else "0-0"


def _events(client: redis.Redis, after: str, rid: str) -> list[dict[str, str]]:
    return [fields for _, fields in read_events(client, after) if fields["run_id"] == rid]


def _reporter(
    redis_url: str, rid: str, clock: FakeClock, **kwargs: object
) -> RedisProgressReporter:
    return RedisProgressReporter(redis_url, rid, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_start_registers_the_run(redis_url: str, client: redis.Redis, run_id: str, clock) -> None:
    reporter = _reporter(redis_url, run_id, clock)
    reporter.start(asset="trained_model", num_epochs=3, num_steps=10, world_size=2, attempt=2)
    assert read_run(client, run_id) == {
        "status": "starting",
        "asset": "trained_model",
        "num_epochs": "3",
        "num_steps": "10",
        "world_size": "2",
        "attempt": "2",
        "error": "",
        "heartbeat": repr(clock.now),
    }
    assert run_id in active_run_ids(client)
    assert reporter.available and reporter.errors == 0
    reporter.close()


def test_step_writes_progress_and_eta(
    redis_url: str, client: redis.Redis, run_id: str, clock
) -> None:
    reporter = _reporter(redis_url, run_id, clock)
    reporter.start(num_epochs=3, num_steps=10)
    reporter.step(epoch=0, step=0, loss=np.float64(2.5), lr=0.1, samples_per_s=np.float32(100))
    run = read_run(client, run_id)
    assert run["status"] == "running"
    assert (run["epoch"], run["step"], run["loss"], run["lr"]) == ("0", "0", "2.5", "0.1")
    assert float(run["samples_per_s"]) == 100.0 and float(run["heartbeat"]) == clock.now
    assert "eta_s" not in run  # no rate yet from a single point

    clock.advance(2.0)
    reporter.step(epoch=0, step=9, loss=1.5, lr=0.1, samples_per_s=100.0)
    run = read_run(client, run_id)
    # 9 steps in 2 s -> 4.5 steps/s; 20 of 30 steps remain.
    assert float(run["eta_s"]) == pytest.approx(20 / 4.5)
    assert run["step"] == "9"
    reporter.close()


def test_step_is_throttled_without_io(
    redis_url: str, client: redis.Redis, run_id: str, clock
) -> None:
    reporter = _reporter(redis_url, run_id, clock, throttle_s=2.0)
    reporter.start(num_epochs=1, num_steps=1000)
    reporter.step(epoch=0, step=0, loss=1.0, lr=0.1, samples_per_s=1.0)
    writes = reporter.writes

    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("a throttled step must not touch Redis")

    real_pipeline = reporter._client.pipeline
    reporter._client.pipeline = no_io  # type: ignore[method-assign]
    for i in range(1, 101):
        clock.advance(0.01)
        reporter.step(epoch=0, step=i, loss=1.0, lr=0.1, samples_per_s=1.0)
    reporter._client.pipeline = real_pipeline  # type: ignore[method-assign]
    assert reporter.writes == writes
    assert read_run(client, run_id)["step"] == "0"

    clock.advance(2.0)
    reporter.step(epoch=0, step=101, loss=1.0, lr=0.1, samples_per_s=1.0)
    assert reporter.writes == writes + 1
    assert read_run(client, run_id)["step"] == "101"
    reporter.close()


def test_epoch_end_always_writes_and_adds_an_event(
    redis_url: str, client: redis.Redis, run_id: str, clock
) -> None:
    reporter = _reporter(redis_url, run_id, clock, throttle_s=60.0)
    reporter.start(num_epochs=3, num_steps=10)
    cursor = _cursor(client)
    metrics = {"val_accuracy": 0.875, "best_metric": 0.875, "epoch": 7.0}
    for epoch in range(2):
        clock.advance(1.0)
        reporter.epoch_end(epoch=epoch, loss=0.5 - epoch / 10, metrics=metrics)
    run = read_run(client, run_id)
    assert (run["status"], run["epoch"], run["loss"]) == ("running", "1", "0.4")
    assert run["best_metric"] == "0.875" and float(run["heartbeat"]) == clock.now
    assert float(run["eta_s"]) == pytest.approx(1.0)  # 10 steps/s, 10 steps left
    events = _events(client, cursor, run_id)
    assert [e["epoch"] for e in events] == ["0", "1"]
    assert events[0] == {
        "event": "epoch_end",
        "run_id": run_id,
        "epoch": "0",
        "loss": "0.5",
        "val_accuracy": "0.875",
        "best_metric": "0.875",
        "metric_epoch": "7.0",
    }
    reporter.close()


def test_checkpoint_records_path_and_event(
    redis_url: str, client: redis.Redis, run_id: str, clock
) -> None:
    reporter = _reporter(redis_url, run_id, clock)
    reporter.start(num_epochs=3, num_steps=10)
    cursor = _cursor(client)
    reporter.checkpoint(path="/runs/x/checkpoints/best.pt", epoch=2, best_metric=0.91)
    run = read_run(client, run_id)
    assert run["last_checkpoint"] == "/runs/x/checkpoints/best.pt"
    assert run["best_metric"] == "0.91"
    assert _events(client, cursor, run_id) == [
        {
            "event": "checkpoint",
            "run_id": run_id,
            "path": "/runs/x/checkpoints/best.pt",
            "epoch": "2",
            "best_metric": "0.91",
        }
    ]
    clock.advance(5.0)
    reporter.heartbeat()
    assert float(read_run(client, run_id)["heartbeat"]) == clock.now
    reporter.close()


@pytest.mark.parametrize(
    ("status", "error", "event"),
    [("succeeded", "", "finished"), ("cancelled", "", "finished"), ("failed", "boom", "failed")],
)
def test_finish_sets_status_ttl_and_leaves_the_active_set(
    redis_url: str, client: redis.Redis, run_id: str, clock, status: str, error: str, event: str
) -> None:
    reporter = _reporter(redis_url, run_id, clock, ttl_s=3600)
    reporter.start(num_epochs=1, num_steps=1)
    cursor = _cursor(client)
    reporter.finish(status, error)
    run = read_run(client, run_id)
    assert (run["status"], run["error"]) == (status, error)
    assert 0 < client.ttl(run_key(run_id)) <= 3600
    assert run_id not in active_run_ids(client)
    assert _events(client, cursor, run_id) == [
        {"event": event, "run_id": run_id, "status": status, "error": error}
    ]
    reporter.close()


def test_a_new_attempt_clears_the_ttl(
    redis_url: str, client: redis.Redis, run_id: str, clock
) -> None:
    reporter = _reporter(redis_url, run_id, clock)
    reporter.start(num_epochs=1, num_steps=1)
    reporter.finish("failed", "worker died")
    reporter.start(num_epochs=1, num_steps=1, attempt=2)
    assert client.ttl(run_key(run_id)) == -1
    assert read_run(client, run_id)["error"] == ""
    assert run_id in active_run_ids(client)
    reporter.close()


def test_finish_rejects_unknown_statuses(redis_url: str, run_id: str) -> None:
    for reporter in (RedisProgressReporter(redis_url, run_id), NullProgressReporter(run_id)):
        with pytest.raises(InvalidRunStatusError, match="'done'"):
            reporter.finish("done")
        reporter.close()


def test_events_stream_is_capped(redis_url: str, client: redis.Redis, run_id: str, clock) -> None:
    reporter = _reporter(redis_url, run_id, clock, stream_maxlen=20)
    for epoch in range(250):
        reporter.epoch_end(epoch=epoch, loss=1.0, metrics={})
    # MAXLEN ~ trims whole stream nodes only, so up to one node more may remain.
    node = int(client.config_get("stream-node-max-entries").get("stream-node-max-entries", 100))
    assert client.xlen(EVENTS_STREAM) <= 20 + node
    reporter.close()


def test_readers_and_mark_status(redis_url: str, client: redis.Redis, run_id: str, clock) -> None:
    reporter = _reporter(redis_url, run_id, clock)
    reporter.start(num_epochs=2, num_steps=1)
    cursor = _cursor(client)
    reporter.epoch_end(epoch=0, loss=1.0, metrics={})
    reporter.epoch_end(epoch=1, loss=0.5, metrics={})
    (first_id, first), (second_id, _) = read_events(client, cursor)
    assert first["epoch"] == "0"
    assert [eid for eid, _ in read_events(client, first_id)] == [second_id]  # exclusive
    assert read_events(client, second_id) == []
    assert len(read_events(client, cursor, count=1)) == 1

    mark_status(client, run_id, "stalled")
    assert read_run(client, run_id)["status"] == "stalled"
    assert run_id in active_run_ids(client)
    assert client.ttl(run_key(run_id)) == -1
    mark_status(client, run_id, "cancelled", error="terminated by stalled_training_sensor")
    run = read_run(client, run_id)
    assert (run["status"], run["error"]) == ("cancelled", "terminated by stalled_training_sensor")
    assert run_id not in active_run_ids(client)
    assert client.ttl(run_key(run_id)) > 0
    with pytest.raises(InvalidRunStatusError):
        mark_status(client, run_id, "paused")
    with pytest.raises(ConfigValueError):
        read_events(client, "not-an-id")
    assert read_run(client, "no-such-run") == {}
    assert set(STATUSES) >= {"starting", "running", "stalled"}
    reporter.close()


def test_read_runs_matches_read_run(
    redis_url: str, client: redis.Redis, run_id: str, clock
) -> None:
    reporter = _reporter(redis_url, run_id, clock)
    reporter.start(num_epochs=2, num_steps=1)
    reporter.epoch_end(epoch=0, loss=1.0, metrics={})
    ids = [run_id, "no-such-run"]
    assert read_runs(client, ids, chunk=1) == {run_id: read_run(client, run_id), "no-such-run": {}}
    some = read_runs(client, ids, fields=("status", "epoch", "step"))
    assert some == {run_id: {"status": "running", "epoch": "0"}, "no-such-run": {}}
    reporter.close()


def test_the_sweep_field_goes_through_progress(
    redis_url: str, client: redis.Redis, run_id: str, clock
) -> None:
    """A sweep trial's board key on the run's hash: written and read only here, and every
    field the hash holds is in RUN_FIELDS (the one list)."""
    reporter = _reporter(redis_url, run_id, clock)
    reporter.start(asset="p/trained_model", num_epochs=2, num_steps=1)
    reporter.epoch_end(epoch=0, loss=1.0, metrics={"best_metric": 0.5})
    reporter.checkpoint(path="/tmp/ckpt.pt", epoch=0, best_metric=0.5)
    reporter.step(epoch=1, step=0, loss=1.0, lr=0.1, samples_per_s=1.0)
    board = "tinyexp:sweep:p:adhoc"
    write_run_sweep(client, run_id, board)
    assert read_progress(client, run_id).sweep == board
    assert read_runs(client, [run_id], fields=("asset", "sweep")) == {
        run_id: {"asset": "p/trained_model", "sweep": board}
    }
    assert set(read_run(client, run_id)) <= set(RUN_FIELDS)
    with pytest.raises(ConfigValueError, match="fields"):
        read_runs(client, [run_id], fields=("no_such_field",))
    reporter.close()


def test_dead_redis_costs_nothing_and_never_raises(log_messages: list[str]) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    reporter = RedisProgressReporter(url, "run-down", throttle_s=0.0, backoff_s=60.0)
    started = time.monotonic()
    reporter.start(num_epochs=10, num_steps=100)
    for i in range(1000):
        reporter.step(epoch=i // 100, step=i % 100, loss=1.0, lr=0.1, samples_per_s=1.0)
    for epoch in range(10):
        reporter.epoch_end(epoch=epoch, loss=1.0, metrics={"acc": 0.5})
    reporter.checkpoint(path="/tmp/x.pt", epoch=9)
    reporter.heartbeat()
    reporter.finish("succeeded")
    reporter.close()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"a dead Redis cost {elapsed:.2f} s"
    assert not reporter.available
    assert reporter.errors == 2  # start, then finish's one forced attempt
    warnings = [m for m in log_messages if "unavailable" in m]
    assert len(warnings) == 1, log_messages
    assert "127.0.0.1" in warnings[0] and "run-down" in warnings[0]
    assert not any("hunter2" in m for m in log_messages)


def test_backoff_then_recovery_then_a_new_outage(clock, log_messages: list[str]) -> None:
    port = free_port()
    url = f"redis://:p%40ss@127.0.0.1:{port}/0"
    reporter = RedisProgressReporter(url, "run-flaky", throttle_s=1.0, backoff_s=10.0, clock=clock)
    reporter.start(num_epochs=1, num_steps=100)
    assert not reporter.available and reporter.errors == 1
    for i in range(5):  # throttle passes, backoff does not: no connection attempts
        clock.advance(1.5)
        reporter.step(epoch=0, step=i, loss=1.0, lr=0.1, samples_per_s=1.0)
    assert reporter.errors == 1

    with RedisClusterManager(ports=[port], password="p@ss") as server:
        clock.advance(10.0)
        reporter.step(epoch=0, step=50, loss=0.5, lr=0.1, samples_per_s=1.0)
        assert reporter.available and reporter.writes == 1
        assert read_run(server.clients()[0], "run-flaky")["step"] == "50"
    clock.advance(1.5)
    reporter.step(epoch=0, step=60, loss=0.5, lr=0.1, samples_per_s=1.0)
    assert not reporter.available and reporter.errors == 2
    reporter.close()
    warnings = [m for m in log_messages if "unavailable" in m]
    assert len(warnings) == 2  # one per outage
    assert any("reachable again" in m for m in log_messages)
    assert not any("p@ss" in m or "p%40ss" in m for m in log_messages)


def test_build_progress_reporter(redis_url: str) -> None:
    for url in (None, ""):
        null = build_progress_reporter(url, "r1")
        assert isinstance(null, NullProgressReporter) and isinstance(null, ProgressReporter)
        null.start(num_epochs=1, num_steps=1)
        null.step(epoch=0, step=0, loss=1.0, lr=0.1, samples_per_s=1.0)
        null.epoch_end(epoch=0, loss=1.0, metrics={})
        null.checkpoint(path="x", epoch=0)
        null.heartbeat()
        null.finish("succeeded")
        null.close()
    real = build_progress_reporter(redis_url, "r2", throttle_s=5.0)
    assert isinstance(real, RedisProgressReporter) and isinstance(real, ProgressReporter)
    real.close()
    with pytest.raises(InvalidRedisUrlError):
        build_progress_reporter("http://localhost/0", "r3")


def test_new_run_id_is_unique_and_readable() -> None:
    ids = {new_run_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"cli-\d{8}T\d{6}Z-[0-9a-f]{6}", rid) for rid in ids)


def test_close_makes_later_calls_no_ops(redis_url: str, run_id: str, clock) -> None:
    reporter = _reporter(redis_url, run_id, clock)
    reporter.close()
    reporter.close()
    reporter.start(num_epochs=1, num_steps=1)
    assert reporter.writes == 0 and reporter.errors == 0


# ---------------------------------------------------------------- the one hash parser


def test_read_progress_parses_what_the_reporter_wrote(
    redis_url: str, client: redis.Redis, run_id: str, clock
) -> None:
    reporter = _reporter(redis_url, run_id, clock, throttle_s=0.0)
    reporter.start(asset="trained_model", num_epochs=3, num_steps=10, world_size=2)
    reporter.step(epoch=0, step=4, loss=1.5, lr=0.1, samples_per_s=80.0)
    clock.advance(1.0)
    reporter.step(epoch=1, step=2, loss=1.25, lr=0.05, samples_per_s=90.0)
    reporter.checkpoint(path="/runs/r/last.pt", epoch=1, best_metric=0.75)
    progress = read_progress(client, run_id)
    assert progress.exists and not progress.finished
    assert (progress.status, progress.asset) == ("running", "trained_model")
    assert (progress.epoch, progress.step, progress.num_epochs, progress.num_steps) == (1, 2, 3, 10)
    assert (progress.loss, progress.lr, progress.samples_per_s) == (1.25, 0.05, 90.0)
    assert progress.heartbeat == clock.now and progress.eta_s is not None
    assert (progress.world_size, progress.attempt) == (2, 1)
    assert (progress.last_checkpoint, progress.best_metric) == ("/runs/r/last.pt", 0.75)
    assert progress.fields == read_run(client, run_id)  # the raw hash, for compare-and-set
    reporter.finish("failed", error="boom")
    finished = read_progress(client, run_id)
    assert finished.finished and finished.status == "failed" and finished.error == "boom"
    reporter.close()


def test_parse_tolerates_missing_and_bad_fields() -> None:
    bad = {"epoch": "x", "step": "", "loss": "nan", "heartbeat": "inf", "num_epochs": "inf"}
    progress = RunProgress.parse("r", bad)
    assert progress.epoch is None and progress.step is None and progress.num_epochs is None
    assert progress.loss != progress.loss  # NaN stays a float: it is what the trainer saw
    assert progress.heartbeat == float("inf")
    empty = RunProgress.parse("gone", {})
    assert not empty.exists and empty.status == "" and empty.eta_s is None
    assert (parse_number("2.5"), parse_number(None), parse_number("abc")) == (2.5, None, None)
