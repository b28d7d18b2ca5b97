"""What a faulty Redis costs a training loop (issue 26): refused, hung and slow, measured.

The loop is the training session's progress path (`wants_step`, then `step` when a write is
due) around 10 ms of work per step. Each fault is real: a closed port (refused), a socket
that accepts and never answers (hung, `test_hung_redis.HungRedis`), and a TCP proxy in front
of a real Redis that holds every reply for 30 ms (slow). The bounds asserted are the ones
docs/reliability.md states ("What a faulty Redis costs training"):

- refused: each attempt fails at once (the client retries it once, ~20 ms later), then the
  reporter backs off for `backoff_s`: at most ~50 ms per backoff window;
- hung: one socket timeout (0.25 s) per backoff window (`backoff_s`, 10 s by default: 2.5%);
- slow (a reply after d < socket timeout): one write per `throttle_s` window, so at most d
  per window (d / throttle_s of the wall time; 30 ms / 2 s = 1.5% at the defaults). A server
  so slow that the connection's handshake (a few round trips) exceeds the socket timeout
  counts as hung.
"""

from __future__ import annotations

import math
import socket
import threading
import time

from tests.reliability.test_hung_redis import HungRedis
from tinyexp_core.progress import RedisProgressReporter

STEP_S = 0.01
RUN_S = 4.0
TIMEOUT_S = 0.25
BACKOFF_S = 2.0
THROTTLE_S = 0.5
DELAY_S = 0.03


class SlowProxy:
    """127.0.0.1 TCP proxy to a real Redis that delays every reply by `delay_s`."""

    def __init__(self, upstream: tuple[str, int], delay_s: float) -> None:
        self.upstream, self.delay_s = upstream, delay_s
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.create_connection(self.upstream)
            self._conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(server, client, self.delay_s), daemon=True
            ).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay_s: float) -> None:
        try:
            while data := src.recv(65536):
                time.sleep(delay_s)
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        for conn in self._conns:
            conn.close()
        self._sock.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _loop(reporter, seconds: float) -> tuple[float, float]:
    """Run `STEP_S` of work per step plus the session's progress calls for `seconds`;
    (seconds spent inside the reporter, wall seconds). Timing the reporter's own calls
    keeps the measure free of the box's noise (other work shifts every sleep)."""
    inside = 0.0
    started = time.perf_counter()
    step = 0
    while time.perf_counter() - started < seconds:
        time.sleep(STEP_S)
        t0 = time.perf_counter()
        if reporter.wants_step():
            reporter.step(epoch=0, step=step, loss=1.0, lr=0.1, samples_per_s=1.0)
        inside += time.perf_counter() - t0
        step += 1
    return inside, time.perf_counter() - started


def _reporter(url: str, run_id: str) -> RedisProgressReporter:
    return RedisProgressReporter(
        url, run_id, throttle_s=THROTTLE_S, socket_timeout_s=TIMEOUT_S, backoff_s=BACKOFF_S
    )


def test_a_refused_connection_costs_next_to_nothing():
    reporter = _reporter(f"redis://127.0.0.1:{_closed_port()}/0", "refused")
    try:
        added, wall = _loop(reporter, RUN_S)
    finally:
        reporter.close()
    print(f"\nrefused: {reporter.errors} failed attempts, {added * 1e3:.1f} ms in {wall:.1f} s")
    assert reporter.errors >= 1 and reporter.writes == 0
    # A refused connect fails at once; the client retries it once after ~20 ms.
    windows = math.ceil(RUN_S / BACKOFF_S) + 1
    assert added <= windows * 0.05


def test_a_hung_server_costs_one_timeout_per_backoff_window():
    server = HungRedis()
    reporter = _reporter(server.url, "hung")
    try:
        added, wall = _loop(reporter, RUN_S)
    finally:
        reporter.close()
        server.close()
    share = added / wall
    windows = math.ceil(RUN_S / BACKOFF_S) + 1
    print(f"\nhung: {reporter.errors} timeouts, +{added:.2f} s ({share:.1%}), bound {windows}")
    assert reporter.errors >= 1 and reporter.writes == 0
    # Each attempt: at most a connect and a read timeout; one attempt per window.
    assert added <= windows * 2 * TIMEOUT_S + 0.2


def test_a_slow_server_costs_its_delay_once_per_throttle_window(redis_url):
    import redis

    upstream = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    proxy = SlowProxy((upstream["host"], upstream["port"]), DELAY_S)
    url = redis_url.replace(f":{upstream['port']}", f":{proxy.port}", 1)
    reporter = _reporter(url, "slow")
    try:
        added, wall = _loop(reporter, RUN_S)
    finally:
        reporter.close()
        proxy.close()
    share = added / wall
    windows = math.ceil(RUN_S / THROTTLE_S) + 1
    print(
        f"\nslow ({DELAY_S * 1e3:.0f} ms replies): {reporter.writes} writes, "
        f"+{added:.2f} s ({share:.1%}), bound {windows} x {DELAY_S} s"
    )
    assert reporter.errors == 0 and 2 <= reporter.writes <= windows  # slow, not failing
    # A write is one pipelined round trip; the first connection's handshake a few more.
    assert added <= reporter.writes * 2 * DELAY_S + 6 * DELAY_S + 0.05
