"""Stack collection of rank processes (`tinyexp_core.progress.stacks`) against real processes and a
real Redis: registration, py-spy on a running and on a SIGSTOPped process, the faulthandler
fallback, and ranks that cannot be reached, each said so."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
import redis

from tests.hung_process import WAIT_FUNCTION, hung_rank
from tinyexp_core.progress import RedisProgressReporter, ranks_key
from tinyexp_core.progress.stacks import RankProcess, collect_stacks, find_py_spy, read_ranks
from tinyexp_core.services.redis_client import make_client


@pytest.fixture
def client(redis_url: str):
    conn = make_client(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def run_id(client: redis.Redis):
    rid = f"test-stacks-{uuid.uuid4().hex[:8]}"
    yield rid
    client.delete(ranks_key(rid))


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "T" in Path(f"/proc/{pid}/status").read_text().split("State:")[1][:4]:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} did not stop")


def test_py_spy_dumps_a_running_and_a_stopped_rank(redis_url, client, run_id, tmp_path):
    assert find_py_spy(), "py-spy ships with ray[default]; the venv must have it"
    with hung_rank(redis_url, run_id, 0, tmp_path) as r0, hung_rank(redis_url, run_id, 1, tmp_path):
        ranks = read_ranks(client, run_id)
        host = socket.gethostname()
        assert [(r.rank, r.host, r.attempt) for r in ranks] == [(0, host, 1), (1, host, 1)]
        assert Path(ranks[0].dump_file).parent == tmp_path / "stacks"
        assert 0 < client.ttl(ranks_key(run_id)) <= 600
        os.kill(r0.pid, signal.SIGSTOP)
        _wait_stopped(r0.pid)
        report = collect_stacks(ranks, world_size=2)
    stopped, running = report.ranks
    assert (stopped.rank, stopped.pid, stopped.method) == (0, r0.pid, "py-spy --nonblocking")
    assert stopped.state.startswith("T"), "recorded as stopped"
    assert running.method == "py-spy"
    for rank in report.ranks:
        assert WAIT_FUNCTION in rank.stack, rank
    assert not report.unreachable and report.elapsed_s < 20
    assert "stacks of 2/2 rank(s)" in report.summary()


def test_faulthandler_fallback_and_what_it_cannot_reach(redis_url, client, run_id, tmp_path):
    """Without py-spy the rank's faulthandler dumps it; a stopped rank cannot run the
    handler, a rank on another host and a rank that never registered are each named."""
    with hung_rank(redis_url, run_id, 0, tmp_path), hung_rank(redis_url, run_id, 1, tmp_path) as r1:
        os.kill(r1.pid, signal.SIGSTOP)
        _wait_stopped(r1.pid)
        remote = RankProcess(rank=2, host="gpu-node-7", pid=4242)
        started = time.monotonic()
        report = collect_stacks([*read_ranks(client, run_id), remote], world_size=4, py_spy=None)
        took = time.monotonic() - started
    by_rank = {r.rank: r for r in report.ranks}
    assert by_rank[0].method == "faulthandler" and WAIT_FUNCTION in by_rank[0].stack
    assert "py-spy: not installed" in by_rank[1].error
    assert "a stopped process cannot run a signal handler" in by_rank[1].error
    assert (
        "runs on host gpu-node-7" in by_rank[2].error
        and "py-spy dump --pid 4242" in by_rank[2].error
    )
    assert "never registered" in by_rank[3].error
    assert [r.rank for r in report.unreachable] == [1, 2, 3]
    assert "rank 1 (host" in report.text() and "NOT COLLECTED" in report.text()
    assert took < 10, "bounded: one faulthandler wait, in parallel"


def test_gone_rank_and_latest_attempt_only(redis_url, client, run_id, tmp_path):
    with hung_rank(redis_url, run_id, 0, tmp_path) as r0:
        pid = r0.pid
    old = RankProcess(rank=1, host="h", pid=1, attempt=0)
    client.hset(ranks_key(run_id), "1", old.to_json())
    [rank0] = read_ranks(client, run_id)  # attempt 1 only
    report = collect_stacks([rank0], world_size=1)
    assert report.ranks[0].error == f"process {pid} is gone"
    assert not report.ranks[0].collected


def test_a_finished_run_takes_its_rank_registrations_with_it(redis_url, client, run_id, tmp_path):
    with hung_rank(redis_url, run_id, 0, tmp_path):
        pass
    reporter = RedisProgressReporter(redis_url, run_id, ttl_s=30)
    reporter.start(num_epochs=1, num_steps=1)
    reporter.finish("succeeded")
    reporter.close()
    assert 0 < client.ttl(ranks_key(run_id)) <= 30
    client.delete(f"tinyexp:run:{run_id}")


def test_an_unused_dump_file_goes_when_the_rank_ends(tmp_path):
    """A rank that ended without a dump leaves no `stacks/` behind in its run directory (a
    rejected run must not change the run directory it tried to resume)."""
    from tinyexp_core.progress.stacks import announce_rank, release_dump_handler

    me = announce_rank("", "r", 0, run_dir=str(tmp_path), ttl_s=60)
    assert Path(me.dump_file).is_file() and me.pid == os.getpid()
    release_dump_handler()
    assert not (tmp_path / "stacks").exists()

    me = announce_rank("", "r", 0, run_dir=str(tmp_path), ttl_s=60)
    os.kill(os.getpid(), signal.SIGUSR2)
    release_dump_handler()
    assert "test_an_unused_dump_file_goes_when_the_rank_ends" in Path(me.dump_file).read_text()
