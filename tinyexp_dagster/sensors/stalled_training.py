"""`stalled_training_sensor`: running trainings without a recent heartbeat -> `stalled`,
with every rank's Python stack recorded on the run, then optionally terminated and resumed
from their last checkpoint; a resume run that hangs at the same step again is failed."""

import json
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
import redis as redis_py

from tinyexp_core.progress import (
    ACTIVE_RUNS_KEY,
    RunProgress,
    active_run_ids,
    mark_status,
    read_runs,
    run_key,
)
from tinyexp_core.progress.stacks import StackReport
from tinyexp_dagster.assets.plan import RESUME_RUN_DIR_TAG, run_dir_id
from tinyexp_dagster.resources import RedisProgressResource, StallSettingsResource, StorageResource
from tinyexp_dagster.sensors import hang
from tinyexp_dagster.sensors.common import shared_sensor, with_store

STALLED_RUN_TAG = "tinyexp/stalled_run"
# `<epoch>:<step>` where the stalled run hung, on its resume run: a second hang there fails.
STALLED_AT_TAG = "tinyexp/stalled_at"
_STACKS_BUDGET_S = 30.0  # stack collection per tick (a tick must end well within a minute)
_RUNS_PER_QUERY = 500  # bounds the run-id list of one run-storage query
# What a stall check reads of the progress hash.
_STALL_FIELDS = ("heartbeat", "status", "epoch", "step", "asset", "world_size")
# What the progress hash calls a run that Dagster shows as finished.
_DAGSTER_FINAL = {
    dg.DagsterRunStatus.SUCCESS: "succeeded",
    dg.DagsterRunStatus.FAILURE: "failed",
    dg.DagsterRunStatus.CANCELED: "cancelled",
}
# What a resume run rematerializes: the stalled pipeline's assets after its dataset.
_RETRAIN_ASSETS = ("trained_model", "model_checkpoint", "model_evaluation")


@shared_sensor(
    name="stalled_training_sensor",
    # Shared by every pipeline: a resume run selects the stalled pipeline's own assets.
    target=dg.AssetSelection.all(),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks running trainings without a recent heartbeat as stalled.",
)
def stalled_training_sensor(
    context: dg.SensorEvaluationContext,
    redis: RedisProgressResource,
    storage: StorageResource,
    stalls: StallSettingsResource,
):
    """A run Dagster shows as STARTED whose heartbeat is older than `stalls.after_s` is
    marked `stalled` and logged, and every rank's Python stack is recorded on it (py-spy;
    see `hang.py`); with `stalls.action="terminate"` it is also terminated and a run of
    its pipeline's retraining assets resumes from its last checkpoint (run key
    `stall:<run_id>:<heartbeat>`, so one request per stall), unless the run is itself such a
    resume run and hangs at the step its predecessor hung at: then it is failed instead.
    Active runs that Dagster shows as finished leave the active set with their real final
    status. Runs this Dagster instance does not know (standalone CLI runs) are left alone."""
    after_s, action = stalls.after_s, stalls.action
    return with_store(redis, storage, lambda client: _stall_tick(context, client, after_s, action))


def _stall_tick(
    context: dg.SensorEvaluationContext, client: redis_py.Redis, after_s: float, action: str
) -> dg.SensorResult | dg.SkipReason:
    handled = set(json.loads(context.cursor)["stalls"]) if context.cursor else set()
    stalls: list[str] = []  # stall keys of the runs stalled now: the next cursor
    requests: list[dg.RunRequest] = []
    notes: list[str] = []
    active = active_run_ids(client)
    started, ended = _dagster_runs(context.instance, active)
    progress = read_runs(client, sorted(started), fields=_STALL_FIELDS)
    stacks_until = time.monotonic() + _STACKS_BUDGET_S
    for run_id in active:
        if run_id in ended:
            final = _DAGSTER_FINAL[ended[run_id].status]
            mark_status(client, run_id, final, _ended_error(ended[run_id].status))
            notes.append(f"run {run_id} ended ({final}) without reporting it; cleaned up")
            continue
        if run_id not in started:
            # Not a run of this instance (a standalone run, another deployment's), or
            # queued, starting or canceling: Dagster is still deciding.
            continue
        parsed = RunProgress.parse(run_id, progress[run_id])
        stall = _stall_of(context, client, parsed, after_s)
        if stall is None:
            continue
        key, age = stall
        if key in handled:
            stalls.append(key)
            continue  # this stall was reported (and acted on) by an earlier tick
        budget = stacks_until - time.monotonic()
        if budget <= 1:
            notes.append(f"run {run_id} stalled; its stacks and action wait for the next tick")
            continue  # not in the cursor: the next tick handles it
        stalls.append(key)
        notes.append(f"run {run_id} stalled ({age:.0f} s without heartbeat)")
        request = _act_on_stall(context, client, parsed, key, age, action, budget)
        requests.extend([request] if request is not None else [])
    cursor = json.dumps({"stalls": sorted(stalls)})
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    idle = f"{len(active)} active run(s), none of this instance stalled (threshold {after_s:g} s)"
    reason = "; ".join(notes) or (idle if active else "no active training runs in Redis")
    return dg.SensorResult(skip_reason=reason, cursor=cursor)


def _dagster_runs(
    instance: dg.DagsterInstance, run_ids: list[str]
) -> tuple[set[str], dict[str, dg.DagsterRun]]:
    """Which of `run_ids` this instance shows as STARTED (ids only) and as finished (records,
    for their status; there are few). A query per run costs several ms on SQLite, and so does
    deserializing a full record per active run: a thousand active runs took seconds per tick."""
    started: set[str] = set()
    ended: dict[str, dg.DagsterRun] = {}
    for start in range(0, len(run_ids), _RUNS_PER_QUERY):
        chunk = run_ids[start : start + _RUNS_PER_QUERY]
        running = dg.RunsFilter(run_ids=chunk, statuses=[dg.DagsterRunStatus.STARTED])
        started.update(instance.get_run_ids(running))
        finished = dg.RunsFilter(run_ids=chunk, statuses=list(_DAGSTER_FINAL))
        ended.update((run.run_id, run) for run in instance.get_runs(finished))
    return started, ended


def _stall_of(
    context: dg.SensorEvaluationContext,
    client: redis_py.Redis,
    progress: RunProgress,
    after_s: float,
) -> tuple[str, float] | None:
    """(stall key, heartbeat age) if the run is stalled, marking it so; else None (a run
    marked stalled earlier whose heartbeat is fresh again goes back to `running`)."""
    run_id = progress.run_id
    if progress.heartbeat is None:
        return None  # registered without a heartbeat: not written by a reporter, leave it
    # The heartbeat exactly as stored: the stall key, and what the compare-and-set expects.
    heartbeat = progress.fields["heartbeat"]
    age = time.time() - progress.heartbeat
    if age <= after_s:
        if progress.status == "stalled" and _set_status_if(
            client, run_id, "running", {"status": "stalled"}
        ):
            context.log.info(f"run {run_id} has a fresh heartbeat again: running")
        return None
    key = f"stall:{run_id}:{heartbeat}"
    if progress.status != "stalled":
        if not _set_status_if(client, run_id, "stalled", {"heartbeat": heartbeat}):
            return None  # the trainer wrote meanwhile: not stalled after all
        where = f"epoch {_or_unknown(progress.epoch)} step {_or_unknown(progress.step)}"
        context.log.warning(
            f"run {run_id} stalled: no heartbeat for {age:.0f} s (threshold {after_s:g} s), "
            f"last at {where}"
        )
    return key, age


def _act_on_stall(
    context: dg.SensorEvaluationContext,
    client: redis_py.Redis,
    progress: RunProgress,
    key: str,
    age: float,
    action: str,
    budget_s: float,
) -> dg.RunRequest | None:
    """Record every rank's stack on the run, then act: report only; terminate and resume;
    or, for a resume run that hangs where its predecessor hung, terminate and fail it."""
    run = context.instance.get_run_by_id(progress.run_id)
    report = hang.collect(client, progress, budget_s)
    where = hang.position(progress)
    repeated = run is not None and run.tags.get(STALLED_AT_TAG) == where
    verdict = ""
    if action == "terminate" and repeated:
        verdict = (
            f"run {progress.run_id} stalled again at {hang.describe(where)}, where run "
            f"{run.tags.get(STALLED_RUN_TAG, '?')} stalled before: not resumed a third time."
        )
    hang.attach(context.instance, client, run, progress, report, age_s=age, verdict=verdict)
    context.log.warning(f"run {progress.run_id}: {report.summary()}")
    if action != "terminate" or run is None:
        return None
    if verdict:
        _fail_repeated_stall(context, client, run, report, verdict)
        return None
    return _terminate_and_resume(context, run, key, progress.asset, where)


def _fail_repeated_stall(
    context: dg.SensorEvaluationContext,
    client: redis_py.Redis,
    run: dg.DagsterRun,
    report: StackReport,
    verdict: str,
) -> None:
    """Terminate the run and mark it failed, in Dagster (the run's failure names the step)
    and in the progress store (`failed`, the error naming the step and carrying the stacks).
    A run that cannot be terminated stays `stalled`: it may still be training."""
    if not _terminate(context, run):
        context.log.warning(f"{verdict} It could not be terminated; not marked failed")
        return
    # After the termination request: an interrupted run that is FAILURE stays FAILURE.
    context.instance.report_run_failed(run, message=verdict)
    mark_status(client, run.run_id, "failed", hang.failure_text(verdict, report, run.run_id))
    context.log.error(verdict)


def _or_unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


def _ended_error(status: dg.DagsterRunStatus) -> str:
    if status == dg.DagsterRunStatus.SUCCESS:
        return ""
    return f"the Dagster run ended {status.value} before the trainer reported a final status"


def _set_status_if(
    client: redis_py.Redis, run_id: str, status: str, expected: Mapping[str, str]
) -> bool:
    """Set `status` only while the run is active and its hash still holds the `expected`
    fields: a trainer that writes meanwhile wins (optimistic WATCH/MULTI)."""
    key = run_key(run_id)
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key, ACTIVE_RUNS_KEY)
            current = pipe.hmget(key, list(expected))
            if list(current) != list(expected.values()):
                return False
            if not pipe.sismember(ACTIVE_RUNS_KEY, run_id):
                return False
            pipe.multi()
            pipe.hset(key, "status", status)
            pipe.execute()
        except redis_py.WatchError:
            return False
    return True


def _terminate(context: dg.SensorEvaluationContext, run: dg.DagsterRun) -> bool:
    """Ask Dagster to terminate the run; whether it confirmed."""
    try:
        return bool(context.instance.run_coordinator.cancel_run(run.run_id))
    except Exception as err:  # a run launcher that cannot terminate raises instead of saying so
        context.log.warning(f"could not terminate stalled run {run.run_id}: {err}")
        return False


def _terminate_and_resume(
    context: dg.SensorEvaluationContext,
    run: dg.DagsterRun,
    stall_key: str,
    asset: str | None,
    where: str,
) -> dg.RunRequest | None:
    """Terminate the stalled run; if that worked, a retrain_job run that continues its
    run directory (and so its last checkpoint), tagged with where this one hung. Without a
    confirmed termination no resume is requested: two trainers must not write one run
    directory."""
    if not _terminate(context, run):
        context.log.warning(
            f"stalled run {run.run_id} was not terminated (its run launcher cannot); "
            "no resume run requested"
        )
        return None
    context.log.warning(f"terminated stalled run {run.run_id}; requesting a resume run")
    run_dir = run_dir_id(run)
    # `<name>/trained_model` (from the progress hash) names the stalled run's pipeline.
    # The stalled run's own selection, when Dagster recorded it, holds only assets that exist.
    prefix = dg.AssetKey.from_user_string(asset or "trained_model").path[:-1]
    selection = [k for k in run.asset_selection or () if k.path[-1] in _RETRAIN_ASSETS]
    return dg.RunRequest(
        run_key=stall_key,
        asset_selection=selection or [dg.AssetKey([*prefix, n]) for n in _RETRAIN_ASSETS],
        run_config=resume_run_config(run.run_config),
        tags={RESUME_RUN_DIR_TAG: run_dir, STALLED_RUN_TAG: run.run_id, STALLED_AT_TAG: where},
        partition_key=run.tags.get("dagster/partition"),  # a sweep trial resumes as itself
    )


def resume_run_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The stalled run's config for its retraining ops (same `exp` and overrides), with
    resume=auto. Op names are the asset keys joined by `__` (`mnist__trained_model`)."""
    ops = dict((run_config or {}).get("ops") or {})
    kept = {op: ops[op] for op in ops if op.rsplit("__", 1)[-1] in _RETRAIN_ASSETS}
    train_ops = [op for op in kept if op.rsplit("__", 1)[-1] == "trained_model"]
    for op in train_ops:
        train = dict(kept[op] or {})
        train["config"] = {**(train.get("config") or {}), "resume": "auto"}
        kept[op] = train
    return {"ops": kept}
