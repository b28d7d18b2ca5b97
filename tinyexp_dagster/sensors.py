"""Sensors: live training progress from Redis, stalled runs, and retraining triggers.

- `training_progress_sensor` (RUNNING): Redis progress events -> `AssetObservation`s on
  `trained_model`;
- `stalled_training_sensor` (RUNNING): active runs without a recent heartbeat -> `stalled`,
  optionally terminated and resumed;
- `retrain_on_new_data_sensor` (RUNNING): a new `prepared_dataset` data version ->
  `retrain_job`;
- `accuracy_regression_sensor` (STOPPED): a `model_evaluation` below the minimum accuracy ->
  `retrain_job`.

The first three are on by default so that `make dev` shows live progress and reacts to new
data without clicks; their only side effects are cheap (observations, a status field) or
asked for (a new data version). The accuracy sensor starts stopped: retraining an unchanged
config on unchanged data rarely lifts accuracy, so turning it on is a deliberate choice.

Environment, read at every evaluation (invalid values fail the tick, naming the variable):
`TINYEXP_STALL_AFTER_S` (600), `TINYEXP_STALL_ACTION` (`report` | `terminate`),
`TINYEXP_MIN_ACCURACY` (0.9).

Redis being unreachable is reported as such (a `SkipReason` naming the redacted URL) and
never as a stall; with no URL configured and no embedded server started yet there is no
progress store, which is also a `SkipReason`. Rejected credentials raise: that is a
configuration error, not an outage.
"""

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
import redis as redis_py

from tinyexp_core.exceptions import ConfigValueError, InvalidRedisUrlError
from tinyexp_core.progress import (
    ACTIVE_RUNS_KEY,
    EVENTS_STREAM,
    FINAL_STATUSES,
    active_run_ids,
    mark_status,
    read_events,
    read_run,
    read_runs,
    run_key,
)
from tinyexp_core.redis_client import classify_redis_error, redact_url
from tinyexp_core.redis_server import EmbeddedRedis

from .assets.training import RESUME_RUN_DIR_TAG
from .jobs import PIPELINE, retrain_job, training_pipeline
from .resources import RedisProgressResource, StorageResource

TRAINED_MODEL = dg.AssetKey("trained_model")
PREPARED_DATASET = dg.AssetKey("prepared_dataset")
MODEL_EVALUATION = dg.AssetKey("model_evaluation")

ENV_STALL_AFTER_S = "TINYEXP_STALL_AFTER_S"
DEFAULT_STALL_AFTER_S = 600.0
ENV_STALL_ACTION = "TINYEXP_STALL_ACTION"
STALL_ACTIONS = ("report", "terminate")
ENV_MIN_ACCURACY = "TINYEXP_MIN_ACCURACY"
DEFAULT_MIN_ACCURACY = 0.9

STALLED_RUN_TAG = "tinyexp/stalled_run"
DATA_VERSION_TAG = "dagster/data_version"  # where Dagster records an Output's DataVersion
SENSOR_NAME_TAG = "dagster/sensor_name"  # set by the daemon on runs a sensor requested
# Dagster tags each materialization with the data versions of the inputs it was computed from.
TRAINED_ON_TAG = f"dagster/input_data_version/{PREPARED_DATASET.to_user_string()}"

MAX_EVENTS_PER_TICK = 500  # a backlog is worked off over several ticks, in order
_RUNS_PER_QUERY = 500  # bounds the run-id list of one run-storage query
_STALL_FIELDS = ("heartbeat", "status", "epoch", "step")  # what a stall check reads
_OBSERVED_EVENTS = ("epoch_end", "finished", "failed")
_EVENT_OWN_FIELDS = ("event", "run_id", "epoch", "loss", "status", "error", "path")
# What the progress hash calls a run that Dagster shows as finished.
_DAGSTER_FINAL = {
    dg.DagsterRunStatus.SUCCESS: "succeeded",
    dg.DagsterRunStatus.FAILURE: "failed",
    dg.DagsterRunStatus.CANCELED: "cancelled",
}
_RETRAIN_OPS = tuple(PIPELINE[1:])  # the asset ops of retrain_job
_TRAINING_JOBS = (training_pipeline.name, retrain_job.name)


# ---------------------------------------------------------------- environment


def stall_after_s() -> float:
    """Seconds without a heartbeat after which a running run counts as stalled."""
    value = _env_number(ENV_STALL_AFTER_S, DEFAULT_STALL_AFTER_S)
    if not 0 < value < float("inf"):
        raise ConfigValueError(ENV_STALL_AFTER_S, value, "a finite number of seconds > 0")
    return value


def stall_action() -> str:
    """`report` (mark and log) or `terminate` (also terminate and request a resume run)."""
    action = os.environ.get(ENV_STALL_ACTION) or "report"
    if action not in STALL_ACTIONS:
        raise ConfigValueError(ENV_STALL_ACTION, action, STALL_ACTIONS)
    return action


def min_accuracy() -> float:
    """Accuracy below which a new evaluation requests a retrain."""
    value = _env_number(ENV_MIN_ACCURACY, DEFAULT_MIN_ACCURACY)
    if not 0.0 <= value <= 1.0:
        raise ConfigValueError(ENV_MIN_ACCURACY, value, "a fraction in [0, 1]")
    return value


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigValueError(name, text, "a number") from None


# ---------------------------------------------------------------- progress store access


def _open_store(
    redis_res: RedisProgressResource, storage: StorageResource
) -> tuple[redis_py.Redis, str] | dg.SkipReason:
    """A client and its redacted URL, or the reason there is no store to read."""
    root = str(storage.resolved_root())
    client = redis_res.client(root)
    if client is not None:
        shown = redact_url(redis_res.url) if redis_res.url else _client_url(client)
        return client, shown
    stale = _embedded_address(root)
    if stale:
        return dg.SkipReason(
            f"Redis unreachable at {redact_url(stale)}: the embedded server of {root} "
            "does not answer"
        )
    return dg.SkipReason(
        "no progress store yet: TINYEXP_REDIS_URL is unset and no embedded Redis runs under "
        f"{root} (the first training run starts it)"
    )


def _embedded_address(root: str) -> str:
    """The address an embedded server of `root` last recorded ("" if none ever started)."""
    try:
        return EmbeddedRedis(root).url_file.read_text().strip()
    except OSError:
        return ""


def _client_url(client: redis_py.Redis) -> str:
    """The server address of an embedded-server client (loopback, no password)."""
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"


def _with_store(
    redis_res: RedisProgressResource,
    storage: StorageResource,
    tick: Any,
) -> dg.SensorResult | dg.SkipReason:
    """Run `tick(client)`; an outage becomes a SkipReason, rejected credentials raise."""
    store = _open_store(redis_res, storage)
    if isinstance(store, dg.SkipReason):
        return store
    client, shown = store
    try:
        return tick(client)
    except (redis_py.RedisError, OSError) as err:
        kind = classify_redis_error(err)
        if kind == "auth":
            raise InvalidRedisUrlError(shown, f"authentication failed: {err}") from None
        if kind == "unreachable":
            return dg.SkipReason(f"Redis unreachable at {shown}: {type(err).__name__}: {err}")
        raise
    finally:
        client.close()


# ---------------------------------------------------------------- training_progress_sensor


@dg.sensor(
    name="training_progress_sensor",
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Turns training progress events in Redis into observations of trained_model.",
)
def training_progress_sensor(
    context: dg.SensorEvaluationContext, redis: RedisProgressResource, storage: StorageResource
):
    """Each new `epoch_end` / `finished` / `failed` event of a `trained_model` run becomes an
    `AssetObservation` on `trained_model` (epoch, losses, accuracy, ETA, run), so the asset page
    shows live progress. The cursor is the last stream id handled: each event is seen once."""
    return _with_store(redis, storage, lambda client: _progress_tick(client, context.cursor))


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
    runs: dict[str, dict[str, str]] = {}
    observations = []
    for _, fields in events:
        run_id = fields.get("run_id", "")
        if fields.get("event") not in _OBSERVED_EVENTS:
            continue
        if run_id not in runs:
            runs[run_id] = read_run(client, run_id)
        if runs[run_id].get("asset") == TRAINED_MODEL.to_user_string():
            observations.append(progress_observation(fields, runs[run_id]))
    new_cursor = events[-1][0]
    if not observations:
        return dg.SensorResult(
            skip_reason=f"{len(events)} new progress events, none of a trained_model epoch "
            "or outcome",
            cursor=new_cursor,
        )
    return dg.SensorResult(asset_events=observations, cursor=new_cursor)


def progress_observation(event: Mapping[str, str], run: Mapping[str, str]) -> dg.AssetObservation:
    """An observation of `trained_model` from one progress event and the run's current hash.

    `epoch` is 1-based, like the per-epoch table of the materialization.
    """
    run_id, kind = event["run_id"], event["event"]
    metadata: dict[str, Any] = {"run_id": dg.MetadataValue.dagster_run(run_id), "event": kind}
    if kind == "epoch_end":
        epoch = int(event["epoch"]) + 1
        metadata["epoch"] = epoch
        metadata["num_epochs"] = _int(run.get("num_epochs"))
        metadata["train_loss"] = _float(event.get("loss"))
        metrics = {k: _float(v) for k, v in event.items() if k not in _EVENT_OWN_FIELDS}
        metrics["best_val_accuracy"] = metrics.pop("best_metric", None)
        metadata.update(metrics)
        if run.get("status") not in FINAL_STATUSES:
            metadata["eta_s"] = _rounded(run.get("eta_s"))
        description = f"epoch {epoch}/{run.get('num_epochs', '?')} of run {run_id}"
    else:
        metadata["status"] = event.get("status", kind)
        metadata["error"] = event.get("error") or None
        metadata["best_val_accuracy"] = _float(run.get("best_metric"))
        description = f"run {run_id} {metadata['status']}"
    metadata["samples_per_s"] = _rounded(run.get("samples_per_s"))
    if run.get("last_checkpoint"):
        metadata["last_checkpoint"] = dg.MetadataValue.path(run["last_checkpoint"])
    metadata = {k: v for k, v in metadata.items() if v is not None}
    return dg.AssetObservation(asset_key=TRAINED_MODEL, description=description, metadata=metadata)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _rounded(text: str | None) -> float | None:
    value = _float(text)
    return None if value is None else round(value, 1)


def _int(text: str | None) -> int | None:
    value = _float(text)
    return None if value is None else int(value)


# ---------------------------------------------------------------- stalled_training_sensor


@dg.sensor(
    name="stalled_training_sensor",
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks running trainings without a recent heartbeat as stalled.",
)
def stalled_training_sensor(
    context: dg.SensorEvaluationContext, redis: RedisProgressResource, storage: StorageResource
):
    """A run Dagster shows as STARTED whose heartbeat is older than `TINYEXP_STALL_AFTER_S` is
    marked `stalled` and logged; with `TINYEXP_STALL_ACTION=terminate` it is also terminated
    and a `retrain_job` run resumes from its last checkpoint (run key
    `stall:<run_id>:<heartbeat>`, so one request per stall). Active runs that Dagster shows as
    finished leave the active set with their real final status. Runs this Dagster instance
    does not know (standalone CLI runs) are left alone."""
    after_s, action = stall_after_s(), stall_action()
    return _with_store(redis, storage, lambda client: _stall_tick(context, client, after_s, action))


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
        stall = _stall_of(context, client, run_id, progress[run_id], after_s)
        if stall is None:
            continue
        key, age = stall
        stalls.append(key)
        if key in handled:
            continue  # this stall was reported (and acted on) by an earlier tick
        notes.append(f"run {run_id} stalled ({age:.0f} s without heartbeat)")
        run = context.instance.get_run_by_id(run_id) if action == "terminate" else None
        if run is not None:
            request = _terminate_and_resume(context, run, key)
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
    run_id: str,
    progress: Mapping[str, str],
    after_s: float,
) -> tuple[str, float] | None:
    """(stall key, heartbeat age) if the run, whose progress hash is `progress`, is
    stalled, marking it so; else None (a run marked stalled earlier whose heartbeat is fresh
    again goes back to `running`)."""
    heartbeat = progress.get("heartbeat", "")
    beat = _float(heartbeat)
    if beat is None:
        return None  # registered without a heartbeat: not written by a reporter, leave it
    age = time.time() - beat
    if age <= after_s:
        if progress.get("status") == "stalled" and _set_status_if(
            client, run_id, "running", {"status": "stalled"}
        ):
            context.log.info(f"run {run_id} has a fresh heartbeat again: running")
        return None
    key = f"stall:{run_id}:{heartbeat}"
    if progress.get("status") != "stalled":
        if not _set_status_if(client, run_id, "stalled", {"heartbeat": heartbeat}):
            return None  # the trainer wrote meanwhile: not stalled after all
        context.log.warning(
            f"run {run_id} stalled: no heartbeat for {age:.0f} s (threshold {after_s:g} s), "
            f"last at epoch {progress.get('epoch', '?')} step {progress.get('step', '?')}"
        )
    return key, age


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


def _terminate_and_resume(
    context: dg.SensorEvaluationContext, run: dg.DagsterRun, stall_key: str
) -> dg.RunRequest | None:
    """Terminate the stalled run; if that worked, a retrain_job run that continues its
    run directory (and so its last checkpoint). Without a confirmed termination no resume is
    requested: two trainers must not write one run directory."""
    try:
        terminated = context.instance.run_coordinator.cancel_run(run.run_id)
    except Exception as err:  # a run launcher that cannot terminate raises instead of saying so
        context.log.warning(f"could not terminate stalled run {run.run_id}: {err}")
        terminated = False
    if not terminated:
        context.log.warning(
            f"stalled run {run.run_id} was not terminated (its run launcher cannot); "
            "no resume run requested"
        )
        return None
    context.log.warning(f"terminated stalled run {run.run_id}; requesting a resume run")
    run_dir = run.root_run_id or run.tags.get(RESUME_RUN_DIR_TAG) or run.run_id
    return dg.RunRequest(
        run_key=stall_key,
        run_config=resume_run_config(run.run_config),
        tags={RESUME_RUN_DIR_TAG: run_dir, STALLED_RUN_TAG: run.run_id},
    )


def resume_run_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The stalled run's config for retrain_job's ops (same overrides), with resume=auto."""
    ops = dict((run_config or {}).get("ops") or {})
    kept = {name: ops[name] for name in _RETRAIN_OPS if name in ops}
    train = dict(kept.get("trained_model") or {})
    train["config"] = {**(train.get("config") or {}), "resume": "auto"}
    kept["trained_model"] = train
    return {"ops": kept}


# ---------------------------------------------------------------- retrain_on_new_data_sensor


@dg.sensor(
    name="retrain_on_new_data_sensor",
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests retrain_job once for each new prepared_dataset data version.",
)
def retrain_on_new_data_sensor(context: dg.SensorEvaluationContext):
    """A `prepared_dataset` materialization with a data version not seen before requests
    `retrain_job` (run key `data:<version>`), unless `trained_model` was already trained on
    it or the run that prepared it trains on it too (`training_pipeline`). The cursor holds
    the last materialization's storage id and data version."""
    instance = context.instance
    record = _latest(instance, PREPARED_DATASET)
    if record is None:
        return dg.SkipReason("no prepared_dataset materialization yet")
    seen = json.loads(context.cursor) if context.cursor else {}
    if record.storage_id <= seen.get("storage_id", -1):
        return dg.SkipReason(
            f"no new prepared_dataset materialization since storage id {seen['storage_id']}"
        )
    version = data_version(record.asset_materialization)
    cursor = json.dumps({"storage_id": record.storage_id, "data_version": version})
    reason = None
    if version is None:
        reason = f"prepared_dataset materialization {record.storage_id} has no data version"
    elif version == seen.get("data_version"):
        reason = f"prepared_dataset rematerialized with the same data version {version}"
    elif _trained_on(instance) == version:
        reason = f"trained_model is already trained on data version {version}"
    elif _run_trains(instance, record.run_id):
        reason = f"data version {version} came from run {record.run_id}, which trains on it"
    if reason is not None:
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    context.log.info(f"new prepared_dataset data version {version}: requesting retrain_job")
    request = dg.RunRequest(run_key=f"data:{version}", tags={"tinyexp/data_version": version})
    return dg.SensorResult(run_requests=[request], cursor=cursor)


def data_version(materialization: dg.AssetMaterialization | None) -> str | None:
    """The materialization's DataVersion, else its `data_version` metadata."""
    if materialization is None:
        return None
    version = (materialization.tags or {}).get(DATA_VERSION_TAG)
    if version:
        return version
    value = materialization.metadata.get("data_version")
    return str(value.value) if value is not None else None


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> Any:
    records = instance.fetch_materializations(key, limit=1).records
    return records[0] if records else None


def _trained_on(instance: dg.DagsterInstance) -> str | None:
    """The prepared_dataset data version of the latest trained_model materialization."""
    record = _latest(instance, TRAINED_MODEL)
    if record is None or record.asset_materialization is None:
        return None
    return (record.asset_materialization.tags or {}).get(TRAINED_ON_TAG)


def _run_trains(instance: dg.DagsterInstance, run_id: str) -> bool:
    """Whether the run `run_id` materializes trained_model too (so retraining is redundant)."""
    run = instance.get_run_by_id(run_id) if run_id else None
    if run is None:
        return False
    return run.job_name in _TRAINING_JOBS or TRAINED_MODEL in (run.asset_selection or ())


# ---------------------------------------------------------------- accuracy_regression_sensor


@dg.sensor(
    name="accuracy_regression_sensor",
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests retrain_job when the latest evaluation is below the minimum accuracy.",
)
def accuracy_regression_sensor(context: dg.SensorEvaluationContext):
    """The latest `model_evaluation` with `accuracy` below `TINYEXP_MIN_ACCURACY` requests
    `retrain_job` once (run key `acc:<storage_id>`). An evaluation produced by a retrain this
    sensor requested does not request another one: that would retrain forever. The cursor is
    the storage id of the last evaluation handled."""
    threshold = min_accuracy()
    record = _latest(context.instance, MODEL_EVALUATION)
    if record is None:
        return dg.SkipReason("no model_evaluation materialization yet")
    last = int(context.cursor) if context.cursor else -1
    if record.storage_id <= last:
        return dg.SkipReason(f"no new model_evaluation since storage id {last}")
    cursor = str(record.storage_id)
    entry = record.asset_materialization.metadata.get("accuracy")
    accuracy = _float(str(entry.value)) if entry is not None else None
    run = context.instance.get_run_by_id(record.run_id) if record.run_id else None
    reason = None
    if accuracy is None:
        reason = f"model_evaluation {record.storage_id} has no accuracy metadata"
    elif accuracy >= threshold:
        reason = f"accuracy {accuracy:.4f} >= minimum {threshold:.4f}"
    elif run is not None and run.tags.get(SENSOR_NAME_TAG) == accuracy_regression_sensor.name:
        reason = (
            f"accuracy {accuracy:.4f} < minimum {threshold:.4f} after the retrain this sensor "
            f"requested (run {run.run_id}); not retraining again"
        )
    if reason is not None:
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    context.log.warning(f"accuracy {accuracy:.4f} < minimum {threshold:.4f}: retraining")
    request = dg.RunRequest(
        run_key=f"acc:{record.storage_id}", tags={"tinyexp/accuracy": f"{accuracy:.4f}"}
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)


SENSORS = [
    training_progress_sensor,
    stalled_training_sensor,
    retrain_on_new_data_sensor,
    accuracy_regression_sensor,
]
