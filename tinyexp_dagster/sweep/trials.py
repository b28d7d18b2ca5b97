"""A sweep's trials from the terminal (`tinyexp-dagster sweep NAME [run|leaderboard]`): each
trial's state, training trials without the daemon, the leaderboard refreshed in process.

Trials run in trial workers (`worker`, `worker_pool`): long-lived processes that load the
code location and join Ray once, then run trial after trial, each one `execute_job` of the
pipeline's training job with the trial's partition tag, so Dagster records each trial in
the instance as any run. There are at most the pool's limit of them (the sweep's
`max_concurrent`, set by the pipeline's pool sensor), so at most that many trials train at
once. The commands (cli_sweep.py, cli_sweep_run.py) parse and print; the work is here.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinyexp_dagster.sweep.definitions import BATCH_TAG
from tinyexp_dagster.sweep.worker_pool import Trial

if TYPE_CHECKING:
    from tinyexp_dagster.cli_location import Pipeline

RUN_TAG = BATCH_TAG  # one value per `sweep run`: its runs, and their sweep board's scope
_POLL_S = 1.0
_LOG_TAIL = 25
_IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def materialized(instance: Any, pipeline: Pipeline, asset: str) -> bool:
    import dagster as dg

    key = dg.AssetKey([pipeline.name, asset])
    return instance.get_latest_materialization_event(key) is not None


@contextlib.contextmanager
def ray_for(root: str, num_trials: int) -> Iterator[None]:
    """The runs' Ray: RAY_ADDRESS, or the live `ray up` head of `root` (they find it
    themselves); with neither and several trials, a head started here for them and
    stopped after them (one Ray start instead of one per trial)."""
    from tinyexp_core.services.ray_head import live_head_address, start_head, stop_head

    if os.environ.get("RAY_ADDRESS"):
        print(f"trials run on RAY_ADDRESS={os.environ['RAY_ADDRESS']}", flush=True)
        yield
        return
    address, why = live_head_address(root)
    if address or num_trials < 2:
        what = (
            f"the local Ray at {address} (`tinyexp-dagster ray up`)"
            if address
            else ("a local Ray started for the run")
        )
        print(f"trials run on {what}", flush=True)
        yield
        return
    if why:
        print(why, flush=True)
    head, started = start_head(root)
    print(f"trials run on a local Ray started for them at {head.address} "
          f"(`tinyexp-dagster ray up` keeps one between commands)", flush=True)  # fmt: skip
    try:
        yield
    finally:
        if started:
            stop_head(root)


def launch_all(
    instance: Any, pipeline: Pipeline, keys: list[str], limit: int, batch: str, root: str
) -> list[str]:
    """Train the trials in at most `limit` workers (`worker_pool`), each idle one handed the
    next waiting trial; returns the keys that did not succeed."""
    from tinyexp_dagster.sweep.worker_pool import WorkerPool

    waiting, failed = list(keys), []
    log_dir = Path(root) / "sweeps" / pipeline.name
    env = {**os.environ, "TINYEXP_STORAGE_ROOT": root}
    pool = WorkerPool(pipeline.location, pipeline.training_job, log_dir, min(limit, len(keys)), env)
    try:
        while waiting or pool.busy():
            for worker in list(pool.idle(len(waiting))):
                worker.give(_trial(pipeline, waiting.pop(0), batch, root))
                print(f"trial {worker.trial.key}: started (log {worker.trial.log})", flush=True)
            for worker, trial, result in pool.finished(_POLL_S):
                if not _report(instance, trial, batch, result, worker):
                    failed.append(trial.key)
    finally:
        pool.stop()  # interrupted: each busy worker's trial gets one SIGINT, see WorkerPool
    return failed


def _trial(pipeline: Pipeline, key: str, batch: str, root: str) -> Trial:
    log = Path(root) / "sweeps" / pipeline.name / f"{_safe(key)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)  # an earlier run's: the worker makes it when the trial starts
    return Trial(key, {"dagster/partition": key, RUN_TAG: batch}, log)


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)


def _report(instance: Any, trial: Trial, batch: str, result: dict | None, worker: Any) -> bool:
    """One line for a finished trial (its run's status and id); the log's tail on failure.
    `result`: the worker's, None when the worker died during the trial."""
    import dagster as dg

    runs = instance.get_runs(
        dg.RunsFilter(tags={RUN_TAG: batch, "dagster/partition": trial.key}), limit=1
    )
    seconds = time.monotonic() - trial.handed_monotonic
    died = f"its worker died, exit {worker.process.poll()}" if result is None else ""
    if runs and died and runs[0].status.value in _IN_PROGRESS:
        _end_orphan(instance, runs[0], f"trial {trial.key}: {died}")
        runs = instance.get_runs(dg.RunsFilter(run_ids=[runs[0].run_id]))
    status = runs[0].status.value if runs else f"no run recorded ({died or result['error']})"
    run = f", run {runs[0].run_id}" if runs else ""
    run += f"; {died}" if runs and died else ""
    ok = bool(runs) and runs[0].status == dg.DagsterRunStatus.SUCCESS and result is not None
    print(f"trial {trial.key}: {status} in {seconds:.0f} s{run}", flush=True)
    if not ok:
        # A worker that died before the trial's log opened said why in its own log.
        lines = (trial.log if trial.log.exists() else worker.log).read_text(errors="replace")
        print("\n".join(f"  | {line}" for line in lines.splitlines()[-_LOG_TAIL:]),
              file=sys.stderr)  # fmt: skip
    return ok


def _end_orphan(instance: Any, run: Any, why: str) -> None:
    """A run whose process died: ended FAILURE (no process is left to end it), its pool
    slots freed for the next trials."""
    instance.report_run_failed(run, message=why)
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


# ---------------------------------------------------------------- the leaderboard


def materialize_in_process(instance: Any, pipeline: Pipeline, asset: str) -> Any:
    """Materialize one unpartitioned asset of the pipeline here (the dataset, the
    leaderboard: neither trains); returns Dagster's result."""
    import dagster as dg

    repo = pipeline.location.repository()
    definition = pipeline.location.definitions()
    key = dg.AssetKey([pipeline.name, asset])
    job_name = next(
        n
        for n in definition.get_implicit_asset_job_names()
        if key in definition.get_job(n).asset_layer.executable_asset_keys
    )
    return dg.execute_job(
        repo.get_reconstructable_job(job_name),
        instance,
        asset_selection=[key],
        tags={"tinyexp/pipeline": pipeline.name},
        # One quick step (the pipeline's executor runs it in this process): its event log in
        # the instance, not on the terminal.
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )


def leaderboard_table(instance: Any, pipeline: Pipeline) -> tuple[Any, list[list[str]], str]:
    """Refresh `<name>/sweep_leaderboard`: (Dagster's result, the table's rows with a header,
    the leader's key); no rows when the materialization failed."""
    import dagster as dg

    result = materialize_in_process(instance, pipeline, "sweep_leaderboard")
    if not result.success:
        return result, [], ""
    event = instance.get_latest_materialization_event(
        dg.AssetKey([pipeline.name, "sweep_leaderboard"])
    )
    meta = event.asset_materialization.metadata
    columns = ("rank", "trial", "status", "epoch", "best", "overrides")
    rows = [[*columns[:4], f"best {meta['primary_metric'].value}", columns[5]]]
    for record in meta["leaderboard"].value.records:
        data = record.data
        rows.append([_cell(data.get(c)) for c in columns])
    leader = meta["leader"].value if "leader" in meta else ""
    return result, rows, leader


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4f}"  # NaN: no metric yet
    return str(value if value is not None else "-")


# ---------------------------------------------------------------- the trials' state


def trial_rows(instance: Any, pipeline: Pipeline) -> list[list[str]]:
    """A table: each trial's state (its newest run's, or its materialization's
    `sweep_status`), epochs, best validation metric and the run's short id."""
    import dagster as dg

    key = dg.AssetKey([pipeline.name, "trained_model"])
    rows = [["trial", "state", "epochs", "metric", "run"]]
    for trial in pipeline.trial_keys:
        mats = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[trial]), limit=1
        ).records
        run = _latest_run(instance, pipeline, trial)
        mat = mats[0] if mats else None
        state, epochs, metric, run_id = "not run", "-", "-", "-"
        if mat is not None:
            meta = mat.asset_materialization.metadata
            state = str(meta["sweep_status"].value) if "sweep_status" in meta else "materialized"
            epochs = str(meta["epochs"].value) if "epochs" in meta else "-"
            metric = _metric_text(meta)
            run_id = mat.run_id
        created = run.create_timestamp.timestamp() if run is not None else 0.0
        newer = run is not None and (mat is None or created > mat.timestamp)
        if newer:
            status = run.dagster_run.status.value
            state = "running" if status in _IN_PROGRESS else status.lower()
            run_id = run.dagster_run.run_id
        rows.append([trial, state, epochs, metric, run_id[:8]])
    return rows


def _latest_run(instance: Any, pipeline: Pipeline, trial: str) -> Any:
    """The newest run record of this trial's training (any job that trains it), or None."""
    import dagster as dg

    key = dg.AssetKey([pipeline.name, "trained_model"])
    records = instance.get_run_records(
        dg.RunsFilter(tags={"dagster/partition": trial}), limit=50
    )  # newest first
    for record in records:
        run = record.dagster_run
        if run.job_name == pipeline.training_job or key in (run.asset_selection or ()):
            return record
    return None


def _metric_text(meta: Any) -> str:
    metric = str(meta["primary_metric"].value).split(" ")[0] if "primary_metric" in meta else ""
    best = meta.get(f"best_val_{metric}")
    return f"val_{metric} {best.value:.4f}" if best is not None else "-"
