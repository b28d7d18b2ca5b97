"""Run-level progress in Redis: the contract between trainers (writers) and sensors (readers).

Keys (see docs/DESIGN.md, "Progress in Redis"):

- `tinyexp:run:<run_id>`: hash of strings; numbers are written with str()/repr() of plain
  Python numbers so readers can float() them.
- `tinyexp:events`: capped stream of `epoch_end`, `checkpoint`, `finished` and `failed`
  events; every entry has the fields `event` and `run_id`.
- `tinyexp:runs:active`: set of the run ids in flight.
- `tinyexp:run:<run_id>:ranks` (hash rank -> JSON: host, pid, ...) and
  `tinyexp:run:<run_id>:stacks` (JSON): who the ranks are, and every rank's stack as the
  stall sensor recorded it (`tinyexp_core.stacks`); they expire with the run's hash.

Conventions: `epoch` and `step` are 0-based indices of the epoch and of the step within it
that just completed; `num_steps` counts the steps of one epoch.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, SupportsFloat, SupportsInt, runtime_checkable
from urllib.parse import unquote, urlsplit

import redis
from loguru import logger
from redis.client import Pipeline

from tinyexp_core.exceptions import ConfigValueError, InvalidRunStatusError
from tinyexp_core.redis_client import make_client, redact_url, validate_redis_url

RUN_KEY_PREFIX = "tinyexp:run:"
EVENTS_STREAM = "tinyexp:events"
ACTIVE_RUNS_KEY = "tinyexp:runs:active"
STATUSES = ("starting", "running", "succeeded", "failed", "cancelled", "stalled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
EVENT_TYPES = ("epoch_end", "checkpoint", "finished", "failed")
DEFAULT_TTL_S = 7 * 24 * 3600
ERROR_MAX_CHARS = 4000  # the error field is a summary; the full traceback lives in the run log
_EVENT_FIELDS = ("event", "run_id", "epoch", "loss")


def run_key(run_id: str) -> str:
    """Redis key of one run's progress hash."""
    return f"{RUN_KEY_PREFIX}{run_id}"


def ranks_key(run_id: str) -> str:
    """Redis hash of a run's rank processes (rank -> JSON: host, pid; `tinyexp_core.stacks`)."""
    return f"{run_key(run_id)}:ranks"


def stacks_key(run_id: str) -> str:
    """Redis string with a run's last stack record (JSON), written by the stall sensor."""
    return f"{run_key(run_id)}:stacks"


def _expire_run(pipe: Pipeline, run_id: str, ttl_s: int) -> None:
    """Give a finished run's keys (hash, rank registrations, stacks) one TTL."""
    for key in (run_key(run_id), ranks_key(run_id), stacks_key(run_id)):
        pipe.expire(key, ttl_s)


def new_run_id() -> str:
    """A run id for standalone (non-Dagster) runs: `cli-<utc timestamp>-<6 hex>`."""
    return f"cli-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


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


def parse_number(text: str | None) -> float | None:
    """A number field of the progress hash or of an event (None if absent or unparsable)."""
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _parse_int(text: str | None) -> int | None:
    value = parse_number(text)
    return None if value is None or not math.isfinite(value) else int(value)


@dataclass(frozen=True)
class RunProgress:
    """One run's progress hash, parsed: the one reader of `tinyexp:run:<run_id>`.

    Numbers are numbers; a field that is missing or does not parse is None (strings: "").
    `fields` keeps the hash as stored, for compare-and-set writes that must match it exactly.
    """

    run_id: str
    status: str = ""
    asset: str = ""
    epoch: int | None = None  # 0-based, the epoch that just completed (or runs)
    num_epochs: int | None = None
    step: int | None = None  # 0-based, within the epoch
    num_steps: int | None = None  # steps per epoch
    loss: float | None = None
    lr: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    heartbeat: float | None = None  # unix time
    last_checkpoint: str = ""
    best_metric: float | None = None
    attempt: int | None = None
    world_size: int | None = None
    error: str = ""
    fields: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def exists(self) -> bool:
        """False for a run with no hash (unknown, or expired after its TTL)."""
        return bool(self.fields)

    @property
    def finished(self) -> bool:
        """Whether the run reported a final status."""
        return self.status in FINAL_STATUSES

    @classmethod
    def parse(cls, run_id: str, fields: Mapping[str, str]) -> RunProgress:
        """Parse a hash as `read_run` returns it."""
        get = fields.get
        return cls(
            run_id=run_id,
            status=get("status", ""),
            asset=get("asset", ""),
            epoch=_parse_int(get("epoch")),
            num_epochs=_parse_int(get("num_epochs")),
            step=_parse_int(get("step")),
            num_steps=_parse_int(get("num_steps")),
            loss=parse_number(get("loss")),
            lr=parse_number(get("lr")),
            samples_per_s=parse_number(get("samples_per_s")),
            eta_s=parse_number(get("eta_s")),
            heartbeat=parse_number(get("heartbeat")),
            last_checkpoint=get("last_checkpoint", ""),
            best_metric=parse_number(get("best_metric")),
            attempt=_parse_int(get("attempt")),
            world_size=_parse_int(get("world_size")),
            error=get("error", ""),
            fields=dict(fields),
        )


def read_progress(client: redis.Redis, run_id: str) -> RunProgress:
    """The parsed progress of `run_id` (`exists` is False if unknown or expired)."""
    return RunProgress.parse(run_id, read_run(client, run_id))


def read_run(client: redis.Redis, run_id: str) -> dict[str, str]:
    """The progress hash of `run_id` ({} if unknown or expired)."""
    return dict(client.hgetall(run_key(run_id)))


def read_runs(
    client: redis.Redis,
    run_ids: Sequence[str],
    *,
    fields: Sequence[str] | None = None,
    chunk: int = 500,
) -> dict[str, dict[str, str]]:
    """The progress hashes of many runs (only `fields` when given, which is cheaper to parse
    than whole hashes), `chunk` runs per pipelined round trip; a missing hash reads as {}."""
    runs: dict[str, dict[str, str]] = {}
    for start in range(0, len(run_ids), chunk):
        ids = run_ids[start : start + chunk]
        pipe = client.pipeline(transaction=False)
        for run_id in ids:
            if fields is None:
                pipe.hgetall(run_key(run_id))
            else:
                pipe.hmget(run_key(run_id), list(fields))
        for run_id, reply in zip(ids, pipe.execute(), strict=True):
            if fields is not None:
                reply = {k: v for k, v in zip(fields, reply, strict=True) if v is not None}
            runs[run_id] = dict(reply)
    return runs


def active_run_ids(client: redis.Redis) -> list[str]:
    """Run ids in flight, sorted."""
    return sorted(client.smembers(ACTIVE_RUNS_KEY))


def read_events(
    client: redis.Redis, after_id: str = "0-0", count: int = 1000
) -> list[tuple[str, dict[str, str]]]:
    """Up to `count` events after the stream id `after_id` (exclusive), oldest first."""
    entries = client.xrange(EVENTS_STREAM, min=_next_stream_id(after_id), count=count)
    return [(entry_id, dict(fields)) for entry_id, fields in entries]


def _next_stream_id(stream_id: str) -> str:
    """The smallest id after `stream_id` (works on Redis < 6.2, which lacks `(` ranges)."""
    ms_text, _, seq_text = stream_id.partition("-")
    try:
        ms, seq = int(ms_text), int(seq_text or 0)
    except ValueError:
        raise ConfigValueError(
            "after_id", stream_id, "a stream id like '1700000000000-0'"
        ) from None
    if seq >= 2**64 - 1:
        return f"{ms + 1}-0"
    return f"{ms}-{seq + 1}"


def mark_status(
    client: redis.Redis,
    run_id: str,
    status: str,
    error: str = "",
    *,
    ttl_s: int = DEFAULT_TTL_S,
    only_if_active: bool = False,
) -> bool:
    """Set a run's status from outside the trainer (the stalled sensor, termination);
    returns whether it was written. `only_if_active`: leave a run that already left the
    active set alone (someone recorded its final status first: that one stands).

    A final status also removes the run from the active set and gives its keys a TTL.
    Redis errors propagate: callers (sensors) decide what to do.
    """
    if status not in STATUSES:
        raise InvalidRunStatusError(status, STATUSES)
    fields = {"status": status}
    if error:
        fields["error"] = error[-ERROR_MAX_CHARS:]
    for _ in range(5):  # WATCH fails when any run joins or leaves the set meanwhile
        with client.pipeline(transaction=True) as pipe:
            try:
                if only_if_active:
                    pipe.watch(ACTIVE_RUNS_KEY)
                    if not pipe.sismember(ACTIVE_RUNS_KEY, run_id):
                        return False
                    pipe.multi()
                pipe.hset(run_key(run_id), mapping=fields)
                if status in FINAL_STATUSES:
                    pipe.srem(ACTIVE_RUNS_KEY, run_id)
                    _expire_run(pipe, run_id, ttl_s)
                pipe.execute()
                return True
            except redis.WatchError:
                continue
    return False
