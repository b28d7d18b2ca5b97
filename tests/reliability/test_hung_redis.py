"""A Redis that accepts connections and never answers: training goes on, readers say so.

The server is a real listening socket on 127.0.0.1 that accepts every connection and
holds it without ever replying (a hung or overloaded server, a black-holing proxy), which
differs from a refused connection: only the socket timeout ends each attempt.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tinyexp_core import checkpoint as ckpt
from tinyexp_core.data import load_source, prepare_dataset
from tinyexp_core.progress import RedisProgressReporter
from tinyexp_core.services.redis_client import classify_redis_error, make_client


class HungRedis:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte back."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self.accepted:
            conn.close()
        self._sock.close()


@pytest.fixture
def hung_redis():
    server = HungRedis()
    try:
        yield server
    finally:
        server.close()


def test_a_timeout_is_classified_unreachable(hung_redis):
    import redis

    client = make_client(hung_redis.url, socket_timeout_s=0.2, connect_timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(redis.RedisError) as err:
        client.ping()
    assert time.monotonic() - started < 2.0
    assert hung_redis.accepted, "the connection must have been accepted, not refused"
    assert classify_redis_error(err.value) == "unreachable"
    client.close()


def _step_costs(reporter, seconds: float, step_s: float = 0.01) -> list[float]:
    """Per-step time of a loop doing `step_s` of work plus one reporter.step call."""
    costs = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        time.sleep(step_s)
        reporter.step(epoch=0, step=i, loss=1.0, lr=0.1, samples_per_s=1.0)
        costs.append(time.perf_counter() - t0)
        i += 1
    return costs


def test_reporter_pays_one_timeout_per_backoff_window(hung_redis):
    """throttle_s=0 (a write attempt every step): the worst case for a hung server."""
    from tinyexp_core.progress import NullProgressReporter

    baseline = _step_costs(NullProgressReporter("base"), 3.0)
    reporter = RedisProgressReporter(
        hung_redis.url, "hung", throttle_s=0.0, socket_timeout_s=0.25, backoff_s=2.0
    )
    try:
        costs = _step_costs(reporter, 6.0)
    finally:
        reporter.close()
    slow = [c for c in costs if c > 0.1]
    base_median = statistics.median(baseline)
    added_median = statistics.median(costs) - base_median
    added_mean = statistics.mean(costs) - statistics.mean(baseline)
    print(
        f"\nhung Redis, write attempted every step: median step +{added_median * 1e3:.2f} ms, "
        f"mean +{added_mean * 1e3:.1f} ms over {len(costs)} steps; {len(slow)} steps paid a "
        f"timeout (max {max(costs):.3f} s); baseline median {base_median * 1e3:.2f} ms"
    )
    assert reporter.errors >= 1 and reporter.writes == 0
    # One timed-out attempt per 2 s backoff window, not one per step.
    assert 1 <= len(slow) <= 6 / 2.0 + 2, slow
    assert max(costs) < 1.5  # one attempt is bounded by the socket timeouts
    assert added_median < 0.005


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    raw = load_source("synthetic", seed=0, num_samples=120)
    return prepare_dataset(raw, tmp_path_factory.mktemp("hung-data")).path


def _train(root: Path, prepared: str, *extra: str) -> tuple[float, float]:
    """(wall seconds, mean seconds per training step) of a one-epoch CLI run."""
    args = [
        sys.executable,
        "-m",
        "tinyexp_core.examples.mnist_exp",
        f"output_root={root}",
        f"data_cfg.prepared_path={prepared}",
        "run_id=r",
        "data_cfg.batch_size=4",
        "train_cfg.num_epochs=1",
        "accelerator_cfg.accelerator=cpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TINYEXP_PROGRESS_URL", None)
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = ckpt.load_checkpoint(root / "r" / "checkpoints" / "last.pt")["extra"]["history"]
    steps = history[-1]["step"]
    return wall, sum(h["epoch_time_s"] for h in history) / steps


def test_training_finishes_with_a_hung_redis(hung_redis, prepared, tmp_path):
    hung_wall, hung_step = _train(
        tmp_path / "hung",
        prepared,
        f"progress_cfg.url={hung_redis.url}",
        "progress_cfg.throttle_s=0",
    )
    base_wall, base_step = _train(tmp_path / "base", prepared, "progress_cfg.enabled=false")
    print(
        f"\none epoch: hung Redis {hung_wall:.1f} s wall, {hung_step * 1e3:.1f} ms/step; "
        f"no Redis {base_wall:.1f} s wall, {base_step * 1e3:.1f} ms/step"
    )
    assert hung_redis.accepted, "the run must have reached the hung server"
    # Loose: a shared CI box's noise dominates; the bounded cost is a few socket timeouts
    # (start, one per 10 s backoff window, the final status), never one per step.
    assert hung_wall < base_wall + 15


def test_progress_cli_and_sensors_say_unreachable(hung_redis, tmp_path, monkeypatch, capsys):
    import dagster as dg

    from tinyexp_dagster.cli import main as cli_main
    from tinyexp_dagster.resources.redis import RedisProgressResource
    from tinyexp_dagster.resources.storage import StorageResource
    from tinyexp_dagster.sensors.common import with_store

    monkeypatch.setenv("TINYEXP_REDIS_URL", hung_redis.url)
    started = time.monotonic()
    status = cli_main(["progress", "--once", "some-run"])
    assert status == 3
    assert f"Redis unreachable at {hung_redis.url}" in capsys.readouterr().err
    assert time.monotonic() - started < 10

    result = with_store(
        RedisProgressResource(url=hung_redis.url),
        StorageResource(root=str(tmp_path)),
        lambda client: client.smembers("tinyexp:runs:active"),
    )
    assert isinstance(result, dg.SkipReason)
    assert "Redis unreachable" in result.skip_message
