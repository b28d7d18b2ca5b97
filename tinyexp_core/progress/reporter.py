"""Writers of the run hash: the ProgressReporter protocol, its Redis implementation (best
effort, bounded cost per call) and the no-op one."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, SupportsFloat, SupportsInt, runtime_checkable
from urllib.parse import unquote, urlsplit

from loguru import logger
from redis.client import Pipeline

from tinyexp_core.config.exceptions import ConfigValueError, InvalidRunStatusError
from tinyexp_core.progress.keys import (
    _EVENT_FIELDS,
    ACTIVE_RUNS_KEY,
    DEFAULT_TTL_S,
    ERROR_MAX_CHARS,
    EVENTS_STREAM,
    FINAL_STATUSES,
    _expire_run,
    run_key,
)
from tinyexp_core.services.redis_client import make_client, redact_url, validate_redis_url


@runtime_checkable
class ProgressReporter(Protocol):
    """What a trainer calls to report run-level progress (rank 0 only)."""

    run_id: str

    def start(
        self,
        *,
        asset: str = "",
        num_epochs: int,
        num_steps: int,
        world_size: int = 1,
        attempt: int = 1,
    ) -> None:
        """Register the run as in flight (status `starting`)."""

    def wants_step(self) -> bool:
        """Whether a `step` call now would be written (the throttle allows it): lets a
        trainer skip reading the loss off the device on steps that would not be sent."""

    def step(self, *, epoch: int, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        """Report a finished step; throttled, so cheap to call every step."""

    def epoch_end(self, *, epoch: int, loss: float, metrics: Mapping[str, float]) -> None:
        """Report a finished epoch (always written, plus an `epoch_end` event)."""

    def checkpoint(self, *, path: str, epoch: int, best_metric: float | None = None) -> None:
        """Report a saved checkpoint (plus a `checkpoint` event)."""

    def heartbeat(self) -> None:
        """Refresh the heartbeat only."""

    def finish(self, status: str, error: str = "") -> None:
        """Report the final status; the run leaves the active set and its key gets a TTL."""

    def close(self) -> None:
        """Release the connection; later calls do nothing."""


class NullProgressReporter:
    """A ProgressReporter that reports nothing (no progress store configured)."""

    def __init__(self, run_id: str = "") -> None:
        self.run_id = run_id

    def start(
        self,
        *,
        asset: str = "",
        num_epochs: int,
        num_steps: int,
        world_size: int = 1,
        attempt: int = 1,
    ) -> None:
        """Do nothing."""

    def wants_step(self) -> bool:
        """Never: nothing is written."""
        return False

    def step(self, *, epoch: int, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        """Do nothing."""

    def epoch_end(self, *, epoch: int, loss: float, metrics: Mapping[str, float]) -> None:
        """Do nothing."""

    def checkpoint(self, *, path: str, epoch: int, best_metric: float | None = None) -> None:
        """Do nothing."""

    def heartbeat(self) -> None:
        """Do nothing."""

    def finish(self, status: str, error: str = "") -> None:
        """Check the status only."""
        if status not in FINAL_STATUSES:
            raise InvalidRunStatusError(status, FINAL_STATUSES)

    def close(self) -> None:
        """Do nothing."""


def _int(value: SupportsInt) -> str:
    return str(int(value))


def _float(value: SupportsFloat) -> str:
    # float() first: repr(numpy.float64(x)) is "np.float64(x)", which float() cannot parse.
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)  # best effort: an odd metric value is still worth showing


class RedisProgressReporter:
    """Best-effort ProgressReporter on Redis: bounded cost per call, never raises on Redis errors.

    After a failed write the reporter leaves Redis alone for `backoff_s` (only `finish` tries
    once regardless), so a dead server costs at most one socket timeout per backoff window.
    """

    def __init__(
        self,
        url: str,
        run_id: str,
        *,
        throttle_s: float = 2.0,
        ttl_s: int = DEFAULT_TTL_S,
        stream_maxlen: int = 10_000,
        socket_timeout_s: float = 0.25,
        backoff_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        validate_redis_url(url)
        if ttl_s < 1:
            raise ConfigValueError("ttl_s", ttl_s, "an integer >= 1 (seconds)")
        if stream_maxlen < 1:
            raise ConfigValueError("stream_maxlen", stream_maxlen, "an integer >= 1")
        self.run_id = run_id
        self.key = run_key(run_id)
        self.errors = 0  # failed write attempts
        self.writes = 0  # successful write round trips
        self._url_shown = redact_url(url)
        self._secrets = _url_secrets(url)
        self._client = make_client(
            url, socket_timeout_s=socket_timeout_s, connect_timeout_s=socket_timeout_s
        )
        self._throttle_s = throttle_s
        self._ttl_s = int(ttl_s)
        self._maxlen = int(stream_maxlen)
        self._backoff_s = backoff_s
        self._clock = clock
        self._failed_at: float | None = None
        self._last_step_at = -math.inf
        self._num_epochs = 0
        self._num_steps = 0
        self._rate_origin: tuple[float, int] | None = None  # (time, steps done) at first step
        self._running_written = False
        self._closed = False

    @property
    def available(self) -> bool:
        """False from a failed write until the next successful one."""
        return self._failed_at is None

    def start(
        self,
        *,
        asset: str = "",
        num_epochs: int,
        num_steps: int,
        world_size: int = 1,
        attempt: int = 1,
    ) -> None:
        """Register the run (status `starting`, in the active set, fresh heartbeat)."""
        self._num_epochs, self._num_steps = int(num_epochs), int(num_steps)
        self._rate_origin = None
        self._running_written = False
        fields = {
            "status": "starting",
            "asset": asset,
            "num_epochs": _int(num_epochs),
            "num_steps": _int(num_steps),
            "world_size": _int(world_size),
            "attempt": _int(attempt),
            "error": "",
            "heartbeat": _float(self._clock()),
        }

        def build(pipe: Pipeline) -> None:
            pipe.hset(self.key, mapping=fields)
            pipe.persist(self.key)  # a resumed attempt may reuse a key that already has a TTL
            pipe.sadd(ACTIVE_RUNS_KEY, self.run_id)

        self._send(build)

    def wants_step(self) -> bool:
        """Whether `throttle_s` has passed since the last step write."""
        return self._clock() - self._last_step_at >= self._throttle_s

    def step(self, *, epoch: int, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        """Write step progress and ETA, at most once every `throttle_s` seconds."""
        now = self._clock()
        if now - self._last_step_at < self._throttle_s:
            return
        self._last_step_at = now
        fields = {
            "epoch": _int(epoch),
            "step": _int(step),
            "loss": _float(loss),
            "lr": _float(lr),
            "samples_per_s": _float(samples_per_s),
            "heartbeat": _float(now),
        }
        self._add_eta(fields, now, int(epoch) * self._num_steps + int(step) + 1)
        self._send_fields(fields)

    def epoch_end(self, *, epoch: int, loss: float, metrics: Mapping[str, float]) -> None:
        """Write the epoch's loss (and `best_metric` if in metrics) and an `epoch_end` event."""
        now = self._clock()
        fields = {"epoch": _int(epoch), "loss": _float(loss), "heartbeat": _float(now)}
        if "best_metric" in metrics:
            fields["best_metric"] = _float(metrics["best_metric"])
        self._add_eta(fields, now, (int(epoch) + 1) * self._num_steps)
        event = {"event": "epoch_end", "run_id": self.run_id, "epoch": fields["epoch"]}
        event["loss"] = fields["loss"]
        for name, value in metrics.items():
            # A metric never shadows the event's own fields.
            event[f"metric_{name}" if name in _EVENT_FIELDS else name] = _float(value)
        self._send_fields(fields, event)

    def checkpoint(self, *, path: str, epoch: int, best_metric: float | None = None) -> None:
        """Record the last checkpoint (and best metric) and add a `checkpoint` event."""
        fields = {"last_checkpoint": str(path), "heartbeat": _float(self._clock())}
        event = {"event": "checkpoint", "run_id": self.run_id, "path": str(path)}
        event["epoch"] = _int(epoch)
        if best_metric is not None:
            fields["best_metric"] = event["best_metric"] = _float(best_metric)
        self._send_fields(fields, event)

    def heartbeat(self) -> None:
        """Refresh the heartbeat only."""
        heartbeat = _float(self._clock())
        self._send(lambda pipe: pipe.hset(self.key, "heartbeat", heartbeat))

    def finish(self, status: str, error: str = "") -> None:
        """Write the final status, leave the active set, set a TTL, add a finished/failed event."""
        if status not in FINAL_STATUSES:
            raise InvalidRunStatusError(status, FINAL_STATUSES)
        error = error[-ERROR_MAX_CHARS:]
        fields = {"status": status, "error": error, "heartbeat": _float(self._clock())}
        kind = "failed" if status == "failed" else "finished"
        event = {"event": kind, "run_id": self.run_id, "status": status, "error": error}

        def build(pipe: Pipeline) -> None:
            pipe.hset(self.key, mapping=fields)
            pipe.srem(ACTIVE_RUNS_KEY, self.run_id)
            _expire_run(pipe, self.run_id, self._ttl_s)
            pipe.xadd(EVENTS_STREAM, event, maxlen=self._maxlen, approximate=True)

        # The last word of a run is worth one bounded attempt even inside a backoff window:
        # otherwise the run would stay "running" in the active set forever.
        self._send(build, force=True)

    def close(self) -> None:
        """Release the connection; later calls do nothing."""
        self._closed = True
        try:
            self._client.close()
        except Exception:  # best effort: closing a broken connection must not raise
            pass

    def _add_eta(self, fields: dict[str, str], now: float, done: int) -> None:
        """Add `eta_s` from the step rate since the first reported step (resume-safe)."""
        if self._rate_origin is None:
            self._rate_origin = (now, done)
            return
        origin_time, origin_done = self._rate_origin
        total = self._num_epochs * self._num_steps
        if total <= 0 or done <= origin_done or now <= origin_time:
            return
        rate = (done - origin_done) / (now - origin_time)
        fields["eta_s"] = _float(max(total - done, 0) / rate)

    def _send_fields(self, fields: dict[str, str], event: dict[str, str] | None = None) -> None:
        if not self._running_written:
            fields = {"status": "running", **fields}

        def build(pipe: Pipeline) -> None:
            pipe.hset(self.key, mapping=fields)
            if event is not None:
                pipe.xadd(EVENTS_STREAM, event, maxlen=self._maxlen, approximate=True)

        if self._send(build) and "status" in fields:
            self._running_written = True

    def _send(self, build: Callable[[Pipeline], object], *, force: bool = False) -> bool:
        """Run one MULTI/EXEC round trip; swallow and count any error (best effort)."""
        if self._closed:
            return False
        now = self._clock()
        if not force and self._failed_at is not None and now - self._failed_at < self._backoff_s:
            return False
        try:
            pipe = self._client.pipeline(transaction=True)
            build(pipe)
            pipe.execute()
        except Exception as exc:  # best effort: progress must never fail a training run
            self._on_error(exc, now)
            return False
        if self._failed_at is not None:
            logger.info("progress store {} reachable again (run {})", self._url_shown, self.run_id)
            self._failed_at = None
        self.writes += 1
        return True

    def _on_error(self, exc: Exception, now: float) -> None:
        self.errors += 1
        if self._failed_at is None:  # warn once per outage, not once per call
            logger.warning(
                "progress store {} unavailable ({}: {}); run {} continues, retrying in {:g} s",
                self._url_shown,
                type(exc).__name__,
                self._scrub(str(exc)),
                self.run_id,
                self._backoff_s,
            )
        self._failed_at = now

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _url_secrets(url: str) -> list[str]:
    """The password of `url` as written and decoded, to keep it out of log messages."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    if not password:
        return []
    return sorted({password, unquote(password)}, key=len, reverse=True)


def build_progress_reporter(url: str | None, run_id: str, **kwargs: Any) -> ProgressReporter:
    """A RedisProgressReporter for `url`, or a NullProgressReporter when no URL is set."""
    if not url:
        return NullProgressReporter(run_id)
    return RedisProgressReporter(url, run_id, **kwargs)
