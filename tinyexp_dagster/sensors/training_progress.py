"""`training_progress_sensor`: progress events in Redis -> observations of each run's
`<name>/trained_model` (shared by every pipeline: the progress hash names the asset key)."""

from collections.abc import Mapping
from typing import Any

import dagster as dg
import redis as redis_py

from tinyexp_core.progress import (
    EVENTS_STREAM,
    RunProgress,
    parse_number,
    read_events,
    read_progress,
)

from ..assets.sweep import LEADERBOARD, leaderboard_metadata
from ..resources import RedisProgressResource, StorageResource
from .common import shared_sensor, with_store

TRAINED_MODEL = "trained_model"  # the last part of every pipeline's training asset key
MAX_EVENTS_PER_TICK = 500  # a backlog is worked off over several ticks, in order
# The daemon writes each observation to the event log in its own transaction (about 10 ms
# each in bench.sensor_cost on 2 shared cores, several times that under load), so a tick's
# cost is set by the observations it emits, not the events it reads. 50 per 10 s tick: the
# newest epoch of 5 runs a second; a busier stream builds a backlog the next ticks work off.
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
    cursor is the last stream id handled: each event is seen once. A tick emits at most
    MAX_OBSERVATIONS_PER_TICK observations, one per run for its newest epoch (plus one for
    its outcome, and one per sweep refreshed); a larger backlog is worked off over the
    next ticks, in order."""
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
    events = read_events(client, cursor, count=MAX_EVENTS_PER_TICK)
    if not events:
        return dg.SkipReason(f"no new progress events after stream id {cursor}")
    observations, handled, boards = _newest_states(client, events)
    observations += [leaderboard_event(client, key, asset) for key, asset in boards.items()]
    new_cursor = events[handled - 1][0]  # the first observed event always fits: handled >= 1
    if not observations:
        return dg.SensorResult(
            skip_reason=f"{handled} new progress events, none of a trained_model epoch or outcome",
            cursor=new_cursor,
        )
    return dg.SensorResult(asset_events=observations, cursor=new_cursor)


def _newest_states(
    client: redis_py.Redis, events: list[tuple[str, dict[str, str]]]
) -> tuple[list[dg.AssetObservation], int, dict[str, str]]:
    """At most MAX_OBSERVATIONS_PER_TICK observations from the oldest events: per run its
    newest epoch end (the UI shows the latest epoch; an earlier one of the same batch is
    folded into it) and its outcome. Returns them and how many events they cover, in
    order: the rest stays after the cursor for the next tick; and the sweep boards those
    events touch (board key -> the trials' asset)."""
    runs: dict[str, RunProgress] = {}
    chosen: dict[tuple[str, str], dict[str, str]] = {}  # (run, epoch|outcome) -> event
    folded: dict[str, int] = {}  # epoch ends replaced by a newer one of the same run
    boards: dict[str, str] = {}  # sweep board key -> the trials' asset
    handled = 0
    for _, fields in events:
        run_id = fields.get("run_id", "")
        if fields.get("event") in _OBSERVED_EVENTS:
            if run_id not in runs:
                runs[run_id] = read_progress(client, run_id)
            if _is_training_asset(runs[run_id].asset):
                slot = (run_id, "epoch" if fields["event"] == "epoch_end" else "outcome")
                if slot not in chosen and len(chosen) >= MAX_OBSERVATIONS_PER_TICK:
                    break  # this event and the rest: next tick
                if slot in chosen and slot[1] == "epoch":
                    folded[run_id] = folded.get(run_id, 0) + 1
                chosen[slot] = fields
                if runs[run_id].fields.get("sweep"):
                    boards[runs[run_id].fields["sweep"]] = runs[run_id].asset
        handled += 1
    observations = [
        progress_observation(fields, runs[run_id], folded=folded.get(run_id, 0) * (kind == "epoch"))
        for (run_id, kind), fields in chosen.items()
    ]
    return observations, handled, boards


def leaderboard_event(
    client: redis_py.Redis, board: str, asset: str
) -> dg.AssetObservation | dg.AssetMaterialization:
    """The sweep's leaderboard (`<name>/sweep_leaderboard`, beside the trials' asset) from
    its board: an observation while trials run, a materialization once all have ended."""
    from tinyexp_core.contract import PrimaryMetric
    from tinyexp_core.sweep import SweepBoard

    sweep = SweepBoard(client, board)
    meta = sweep.meta()
    metric = PrimaryMetric(meta.get("metric", "metric"), meta.get("direction", "max"))
    metadata = leaderboard_metadata(sweep.rows(), metric)
    key = dg.AssetKey([*dg.AssetKey.from_user_string(asset).path[:-1], LEADERBOARD])
    if sweep.finished():
        return dg.AssetMaterialization(
            asset_key=key, description=f"sweep {board}: every trial ended", metadata=metadata
        )
    return dg.AssetObservation(asset_key=key, description=f"sweep {board}", metadata=metadata)


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
