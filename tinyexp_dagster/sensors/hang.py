"""Hang diagnosis for `stalled_training_sensor`: every rank's Python stack, attached to the
stalled Dagster run (an engine event whose metadata holds one stack per rank) and to the
progress store (`tinyexp:run:<run_id>:stacks`), and the verdict on a hang that repeats."""

from __future__ import annotations

import json

import dagster as dg
import redis as redis_py

from tinyexp_core.progress import DEFAULT_TTL_S, ERROR_MAX_CHARS, RunProgress, stacks_key
from tinyexp_core.progress.stacks import StackReport, collect_stacks, read_ranks

STACK_EVENT_PREFIX = "stalled_training_sensor: every rank's stack"  # the engine event's message


def position(progress: RunProgress) -> str:
    """Where the run last reported being, `<epoch>:<step>` (`?` for a part never reported):
    the tag that lets a stall of the resume run be compared with its predecessor's."""

    def part(value: int | None) -> str:
        return "?" if value is None else str(value)

    return f"{part(progress.epoch)}:{part(progress.step)}"


def describe(where: str) -> str:
    """`3:12` -> `epoch 3 step 12` (0-based, as the progress hash stores them)."""
    epoch, _, step = where.partition(":")
    return f"epoch {epoch} step {step}"


def collect(client: redis_py.Redis, progress: RunProgress, budget_s: float) -> StackReport:
    """Every registered rank's stack (the latest attempt's), within `budget_s`."""
    ranks = read_ranks(client, progress.run_id)
    return collect_stacks(ranks, world_size=progress.world_size, budget_s=budget_s)


def attach(
    instance: dg.DagsterInstance,
    client: redis_py.Redis,
    run: dg.DagsterRun | None,
    progress: RunProgress,
    report: StackReport,
    *,
    age_s: float,
    verdict: str = "",
) -> None:
    """Record the stacks on the Dagster run (engine event, one metadata entry per rank; an
    error when `verdict` says the run failed) and in the progress store (JSON, with a TTL)."""
    where = position(progress)
    record = {
        "run_id": progress.run_id,
        "epoch": progress.epoch,
        "step": progress.step,
        "heartbeat_age_s": round(age_s, 1),
        "verdict": verdict,
        "report": json.loads(report.to_json()),
    }
    client.set(stacks_key(progress.run_id), json.dumps(record), ex=DEFAULT_TTL_S)
    if run is None:
        return
    metadata: dict[str, dg.MetadataValue] = {
        "position": dg.MetadataValue.text(describe(where)),
        "heartbeat_age_s": dg.MetadataValue.float(round(age_s, 1)),
        "collected": dg.MetadataValue.text(report.summary()),
        "collector_host": dg.MetadataValue.text(report.host),
    }
    for rank in report.ranks:
        metadata[f"rank_{rank.rank}"] = dg.MetadataValue.text(f"{rank.header()}\n{rank.stack}")
    message = f"{STACK_EVENT_PREFIX} at {describe(where)} ({report.summary()})"
    error = None
    if verdict:
        from dagster._utils.error import SerializableErrorInfo

        message = f"{verdict} {message}"
        error = SerializableErrorInfo(verdict, report.text().splitlines(True), "RepeatedStall")
    from dagster._core.events import EngineEventData

    instance.report_engine_event(
        message, dagster_run=run, engine_event_data=EngineEventData(metadata, error=error)
    )


def failure_text(verdict: str, report: StackReport, run_id: str) -> str:
    """The progress store's `error` for a run given up on: the verdict first, then as much
    of the stacks as the field holds (all of them are under `tinyexp:run:<id>:stacks`)."""
    head = f"{verdict} {report.summary()}. Full stacks: {stacks_key(run_id)}\n"
    room = ERROR_MAX_CHARS - len(head)
    return head + report.text()[: max(room, 0)]
