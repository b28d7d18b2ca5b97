"""Readers of the run hash and the event stream (RunProgress: the one parser), and the
writes from outside a trainer: `mark_status` (sensors, termination) and `write_run_sweep`
(a sweep trial's monitor)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis

from tinyexp_core.config.exceptions import ConfigValueError, InvalidRunStatusError
from tinyexp_core.progress.keys import (
    ACTIVE_RUNS_KEY,
    DEFAULT_TTL_S,
    ERROR_MAX_CHARS,
    EVENTS_STREAM,
    FINAL_STATUSES,
    RUN_FIELDS,
    STATUSES,
    _expire_run,
    run_key,
)


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
    sweep: str = ""  # a sweep trial's board key (tinyexp_core.sweep.SweepBoard), else ""
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
            sweep=get("sweep", ""),
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
    unknown = sorted(set(fields or ()) - set(RUN_FIELDS))
    if unknown:
        raise ConfigValueError("fields", unknown[0], RUN_FIELDS)
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


def write_run_sweep(client: redis.Redis, run_id: str, board: str) -> None:
    """Record on a run's hash the sweep board its trial reports to (the hash's `sweep`
    field), so the progress sensor refreshes that sweep's leaderboard. Redis errors
    propagate: the caller (the sweep monitor) is best effort."""
    client.hset(run_key(run_id), "sweep", board)


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
