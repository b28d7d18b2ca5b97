"""`tinyexp-dagster progress [RUN_ID]` against a real Redis.

Runs are written by the real RedisProgressReporter. The shared `redis_url` server may hold
other tests' runs, so the test that waits for "no active run" uses a private server.
"""

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tinyexp_core.progress import ACTIVE_RUNS_KEY, RedisProgressReporter, RunProgress, run_key
from tinyexp_core.services.lifecycle import free_port
from tinyexp_core.services.redis_client import make_client
from tinyexp_core.services.redis_cluster import RedisClusterManager
from tinyexp_dagster.cli import main, render_run


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def new_run_id(redis_url: str) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        made.append(f"cli-test-{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield make
    client = make_client(redis_url)
    for rid in made:
        client.delete(run_key(rid))
        client.srem(ACTIVE_RUNS_KEY, rid)
    client.close()


@pytest.fixture
def use_redis(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> str:
    monkeypatch.setenv("TINYEXP_REDIS_URL", redis_url)
    return redis_url


@pytest.fixture
def private_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Redis server of this test alone (its active set holds only this test's runs)."""
    with RedisClusterManager(num_shards=1) as server:
        monkeypatch.setenv("TINYEXP_REDIS_URL", server.urls[0])
        yield server.urls[0]


def running(url: str, run_id: str, clock: Clock) -> RedisProgressReporter:
    """A run at epoch 2/3, step 5/10 of that epoch, loss 0.5, with an ETA."""
    rep = RedisProgressReporter(url, run_id, throttle_s=0.0, clock=clock)
    rep.start(asset="trained_model", num_epochs=3, num_steps=10)
    rep.step(epoch=1, step=0, loss=0.75, lr=0.1, samples_per_s=50.0)
    clock.now += 4.0
    rep.step(epoch=1, step=4, loss=0.5, lr=0.1, samples_per_s=50.0)
    return rep


def progress(*args: str) -> int:
    return main(["--storage-root", "/nonexistent-tinyexp-root", "progress", *args])


def test_once_shows_bar_epoch_step_loss_and_eta(use_redis, new_run_id, capsys):
    rid = new_run_id()
    running(use_redis, rid, Clock(time.time() - 4.0))
    assert progress(rid, "--once") == 0
    out = capsys.readouterr().out
    [line] = out.splitlines()
    # 1 epoch + 5 of 10 steps done out of 30 steps; 4 steps in 4 s -> 15 steps left, 15 s.
    assert line.startswith(f"{rid}  running")
    assert "[" + "#" * 12 + "." * 12 + "]   50%" in line
    assert "epoch 2/3  step 5/10  loss 0.5000  ETA 0:00:15" in line


def test_without_run_id_every_active_run_is_shown(use_redis, new_run_id, capsys):
    first, second = new_run_id(), new_run_id()
    running(use_redis, first, Clock(time.time()))
    running(use_redis, second, Clock(time.time()))
    assert progress("--once") == 0
    out = capsys.readouterr().out
    assert f"{first}  running" in out and f"{second}  running" in out


def test_watch_exits_with_the_run_outcome(use_redis, new_run_id, capsys):
    rid = new_run_id()
    rep = running(use_redis, rid, Clock(time.time()))

    def train_on() -> None:
        time.sleep(0.5)
        rep.epoch_end(epoch=1, loss=0.4, metrics={})
        rep.step(epoch=2, step=9, loss=0.25, lr=0.1, samples_per_s=50.0)
        time.sleep(0.5)
        rep.finish("succeeded")

    trainer = threading.Thread(target=train_on)
    trainer.start()
    status = progress(rid, "--interval", "0.05")
    trainer.join()
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert "epoch 2/3" in lines[0] and "epoch 3/3  step 10/10  loss 0.2500" in lines[-2]
    assert lines[-1].startswith(f"{rid}  succeeded") and "100%" in lines[-1]
    assert len(lines) == len(set(lines)), "off a terminal, a frame prints only when it changes"


def test_failed_and_unknown_runs_exit_1(use_redis, new_run_id, capsys):
    rid = new_run_id()
    rep = running(use_redis, rid, Clock(time.time()))
    rep.finish("failed", error="Traceback ...\nRuntimeError: loss is NaN")
    assert progress(rid) == 1
    assert "failed" in capsys.readouterr().out
    failed = {"status": "failed", "error": "Traceback ...\nRuntimeError: loss is NaN"}
    line = render_run(RunProgress.parse(rid, failed), time.time())
    assert "error: RuntimeError: loss is NaN" in line

    assert progress(f"cli-test-unknown-{uuid.uuid4().hex[:6]}") == 1
    assert "not started yet, or expired" in capsys.readouterr().out


def test_all_runs_view_exits_when_none_is_active(private_redis, capsys):
    reps = [running(private_redis, f"run-{i}", Clock(time.time())) for i in range(2)]

    def finish_all() -> None:
        for rep in reps:
            time.sleep(0.2)
            rep.finish("succeeded")

    finisher = threading.Thread(target=finish_all)
    finisher.start()
    assert progress("--interval", "0.05") == 0
    finisher.join()
    last_frame = capsys.readouterr().out.splitlines()[-2:]
    assert [line.split()[:2] for line in last_frame] == [
        ["run-0", "succeeded"],
        ["run-1", "succeeded"],
    ]


def test_stale_heartbeat_is_shown():
    run = {"status": "running", "epoch": "0", "heartbeat": str(time.time() - 125)}
    assert "(last heartbeat 0:02:05 ago)" in render_run(RunProgress.parse("r", run), time.time())


def test_redis_unreachable_exits_non_zero_with_the_redacted_url(monkeypatch, capsys):
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("TINYEXP_REDIS_URL", url)
    assert progress("--once") == 3
    err = capsys.readouterr().err
    assert err.startswith(f"Redis unreachable at {url.replace('s3cret', '***')}")
    assert "s3cret" not in err


def test_without_a_store_or_with_a_dead_embedded_server(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TINYEXP_REDIS_URL", raising=False)
    root = str(tmp_path)
    assert main(["--storage-root", root, "progress", "--once"]) == 3
    assert capsys.readouterr().err.startswith("no progress store yet: TINYEXP_REDIS_URL is unset")

    dead = f"redis://127.0.0.1:{free_port()}/0"
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "redis.url").write_text(dead + "\n")
    assert main(["--storage-root", root, "progress", "--once"]) == 3
    assert capsys.readouterr().err.startswith(f"Redis unreachable at {dead}")


def test_embedded_server_is_found_through_the_storage_root(monkeypatch, tmp_path, capsys):
    from tinyexp_core.services.embedded_redis import EmbeddedRedis

    monkeypatch.delenv("TINYEXP_REDIS_URL", raising=False)
    server = EmbeddedRedis(tmp_path)
    url = server.ensure()
    try:
        running(url, "embedded-run", Clock(time.time()))
        assert main(["--storage-root", str(tmp_path), "progress", "embedded-run", "--once"]) == 0
        assert "embedded-run  running" in capsys.readouterr().out
    finally:
        server.stop()


def test_interval_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        progress("--interval", "0")
    assert exit_info.value.code == 2
    assert "expected a number of seconds > 0" in capsys.readouterr().err


def test_client_errors_other_than_outages_propagate(use_redis, new_run_id):
    """A wrong-type key is a bug to see, not an outage to report."""
    rid = new_run_id()
    client = make_client(use_redis)
    client.set(run_key(rid), "not a hash")
    with pytest.raises(redis.ResponseError):
        progress(rid, "--once")


@pytest.mark.parametrize("password", ["", "wrong"])
def test_rejected_credentials_exit_2_not_unreachable(monkeypatch, capsys, password):
    """No password (a NOAUTH reply) or a wrong one (WRONGPASS): a configuration error."""
    with RedisClusterManager(password="s3cret") as server:
        auth = f":{password}@" if password else ""
        url = f"redis://{auth}127.0.0.1:{server.ports[0]}/0"
        monkeypatch.setenv("TINYEXP_REDIS_URL", url)
        assert progress("--once") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Redis at {url.replace(':wrong@', ':***@')} rejected")
    assert "wrong" not in err.replace("wrong number", "")
