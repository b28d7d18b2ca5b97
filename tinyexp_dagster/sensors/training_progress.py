"""`training_progress_sensor`: progress events in Redis -> observations of each run's
`<name>/trained_model` (shared by every pipeline: the progress hash names the asset key)."""

import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
import redis as redis_py

from tinyexp_core.progress import (
    EVENTS_STREAM,
    RunProgress,
    parse_number,
    read_events,
    read_runs,
)
from tinyexp_dagster.resources import RedisProgressResource, StorageResource
from tinyexp_dagster.sensors.common import shared_sensor, with_store
from tinyexp_dagster.sensors.progress_backlog import EPOCH, OUTCOME, Backlog
from tinyexp_dagster.sweep import leaderboard_event

TRAINED_MODEL = "trained_model"  # the last part of every pipeline's training asset key
MAX_EVENTS_PER_TICK = 500  # events per read; a tick reads batches until READ_BUDGET_S
READ_BUDGET_S = 0.5  # a tick stops reading new events after this long (the rest: next tick)
# The daemon writes each observation to the event log in its own transaction (about 10 ms
# each in bench.sensor_cost on 2 shared cores, several times that under load), so a tick's
# cost is set by the observations it emits, not the events it reads. 50 per 10 s tick: the
# newest epoch of 5 runs a second; beyond that, runs wait in the backlog (progress_backlog),
# which holds at most two slots per run however busy the stream, and so always empties.
MAX_OBSERVATIONS_PER_TICK = 50
_OBSERVED_EVENTS = ("epoch_end", "finished", "failed")
_EVENT_OWN_FIELDS = ("event", "run_id", "epoch", "loss", "status", "error", "path")


@shared_sensor(
    name="training_progress_sensor",
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Turns training progress events in Redis into observations of each "
    "pipeline's <name>/trained_model.",
)
def training_progress_sensor(
    context: dg.SensorEvaluationContext, redis: RedisProgressResource, storage: StorageResource
):
    """Each new `epoch_end` / `finished` / `failed` event of a training run becomes an
    `AssetObservation` on the asset its progress hash names (`<name>/trained_model`: epoch,
    losses, metrics, ETA, run), so the asset page shows live progress. A sweep trial's
    event also refreshes `<name>/sweep_leaderboard` from the sweep's board in Redis: an
    observation while trials train, a materialization once every trial has ended. The
    cursor is the last stream id read plus the backlog (`progress_backlog`): each event is
    seen once. A tick reads new events for at most READ_BUDGET_S, keeps per run its newest
    epoch end and its outcome, and emits at most MAX_OBSERVATIONS_PER_TICK observations
    (plus one per sweep refreshed), oldest first; the rest wait for the next ticks."""
    return with_store(redis, storage, lambda client: _progress_tick(client, context.cursor))


def _progress_tick(client: redis_py.Redis, cursor: str | None) -> dg.SensorResult | dg.SkipReason:
    if cursor is None:
        # Replaying a capped stream of old runs would bury the asset page in history.
        last = client.xrevrange(EVENTS_STREAM, count=1)
        start = last[0][0] if last else "0-0"
        return dg.SensorResult(
            skip_reason=f"following {EVENTS_STREAM} from stream id {start}; "
            "earlier events are not replayed",
            cursor=start,
        )
    backlog = Backlog.parse(cursor)
    read, boards = _read_new_events(client, backlog)
    if not read and not backlog.pending:
        return dg.SkipReason(f"no new progress events after stream id {backlog.stream}")
    observations = _observe(client, backlog.take(MAX_OBSERVATIONS_PER_TICK))
    observations += [leaderboard_event(client, key, asset) for key, asset in boards.items()]
    if not observations:
        return dg.SensorResult(
            skip_reason=f"{read} new progress events, none of a trained_model epoch or outcome",
            cursor=backlog.dump(),
        )
    return dg.SensorResult(asset_events=observations, cursor=backlog.dump())


def _read_new_events(client: redis_py.Redis, backlog: Backlog) -> tuple[int, dict[str, str]]:
    """Read events after the backlog's stream id (batches, within READ_BUDGET_S) into its
    slots; returns how many were read and the sweep boards they touch (key -> asset)."""
    deadline = time.monotonic() + READ_BUDGET_S
    runs: dict[str, dict[str, str]] = {}  # run id -> its asset and sweep fields
    boards: dict[str, str] = {}
    read = 0
    while True:
        events = read_events(client, backlog.stream, count=MAX_EVENTS_PER_TICK)
        if not events:
            break
        observed = [(eid, f) for eid, f in events if f.get("event") in _OBSERVED_EVENTS]
        ids = dict.fromkeys(f.get("run_id", "") for _, f in observed)
        unknown = [run_id for run_id in ids if run_id not in runs]
        runs.update(read_runs(client, unknown, fields=("asset", "sweep")))
        for event_id, fields in observed:
            run = runs[fields.get("run_id", "")]
            if not _is_training_asset(run.get("asset")):
                continue
            kind = EPOCH if fields["event"] == "epoch_end" else OUTCOME
            backlog.add(fields["run_id"], kind, event_id)
            if run.get("sweep"):
                boards[run["sweep"]] = run["asset"]
        read += len(events)
        backlog.stream = events[-1][0]
        if len(events) < MAX_EVENTS_PER_TICK or time.monotonic() > deadline:
            break
    return read, boards


def _observe(
    client: redis_py.Redis, slots: list[tuple[str, str, str, int]]
) -> list[dg.AssetObservation]:
    """The observations of the slots taken from the backlog: each from its event (or, when
    the capped stream has dropped it since, from the run's hash) and the run's progress."""
    pipe = client.pipeline(transaction=False)
    for _, _, event_id, _ in slots:
        pipe.xrange(EVENTS_STREAM, min=event_id, max=event_id, count=1)
    found = pipe.execute() if slots else []
    hashes = read_runs(client, list(dict.fromkeys(run for run, *_ in slots)))
    observations = []
    for (run_id, kind, _, folded), entries in zip(slots, found, strict=True):
        run = RunProgress.parse(run_id, hashes[run_id])
        fields = dict(entries[0][1]) if entries else _event_from_hash(run_id, kind, run)
        observations.append(
            progress_observation(fields, run, folded=folded if kind == EPOCH else 0)
        )
    return observations


def _event_from_hash(run_id: str, kind: str, run: RunProgress) -> dict[str, str]:
    if kind == EPOCH:
        event = {"event": "epoch_end", "run_id": run_id, "epoch": run.fields.get("epoch", "0")}
        return {**event, "loss": run.fields.get("loss", "")}
    status = run.fields.get("status", "finished")
    return {"event": "failed" if status == "failed" else "finished", "run_id": run_id,
            "status": status, "error": run.fields.get("error", "")}  # fmt: skip


def _is_training_asset(asset: str | None) -> bool:
    return bool(asset) and dg.AssetKey.from_user_string(asset).path[-1] == TRAINED_MODEL


def progress_observation(
    event: Mapping[str, str], run: RunProgress, *, folded: int = 0
) -> dg.AssetObservation:
    """An observation of the run's asset (`<name>/trained_model`, from its progress hash)
    from one progress event and the run's current progress.

    `epoch` is 1-based, like the per-epoch table of the materialization. `folded`: how many
    earlier epoch ends of the run this one stands for (handled in the same tick).
    """
    run_id, kind = event["run_id"], event["event"]
    metadata: dict[str, Any] = {"run_id": dg.MetadataValue.dagster_run(run_id), "event": kind}
    if kind == "epoch_end":
        epoch = int(event["epoch"]) + 1
        metadata["epoch"] = epoch
        metadata["num_epochs"] = run.num_epochs
        metadata["train_loss"] = parse_number(event.get("loss"))
        metrics = {k: parse_number(v) for k, v in event.items() if k not in _EVENT_OWN_FIELDS}
        metrics["best_metric"] = metrics.pop("best_metric", None)  # the primary metric's
        metadata.update(metrics)
        if not run.finished:
            metadata["eta_s"] = _rounded(run.eta_s)
        total = "?" if run.num_epochs is None else run.num_epochs
        description = f"epoch {epoch}/{total} of run {run_id}"
        if folded:
            metadata["epoch_ends_folded_in"] = folded
            description += f" ({folded} earlier epoch end(s) of this run folded in)"
    else:
        metadata["status"] = event.get("status", kind)
        metadata["error"] = event.get("error") or None
        metadata["best_metric"] = run.best_metric
        description = f"run {run_id} {metadata['status']}"
    metadata["samples_per_s"] = _rounded(run.samples_per_s)
    if run.last_checkpoint:
        metadata["last_checkpoint"] = dg.MetadataValue.path(run.last_checkpoint)
    metadata = {k: v for k, v in metadata.items() if v is not None}
    key = dg.AssetKey.from_user_string(run.asset or TRAINED_MODEL)
    return dg.AssetObservation(asset_key=key, description=description, metadata=metadata)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
