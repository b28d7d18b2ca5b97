"""A sweep's trials from the terminal (`tinyexp-dagster sweep NAME [run|leaderboard]`): each
trial's state, training trials without the daemon, the leaderboard refreshed in process.

Each trial is one `dagster job execute` process (the pipeline's training job, the trial's
partition tag), so Dagster records it in the instance as any run; at most the pool's limit
(the sweep's `max_concurrent`, set by the pipeline's pool sensor) run at once. The commands
(cli_sweep.py, cli_sweep_run.py) parse and print; the work is here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tinyexp_dagster.sweep.definitions import BATCH_TAG

if TYPE_CHECKING:
    from tinyexp_dagster.cli_location import Pipeline

RUN_TAG = BATCH_TAG  # one value per `sweep run`: its runs, and their sweep board's scope
_POLL_S = 1.0
_LOG_TAIL = 25
_IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


@dataclass
class _Trial:
    """One trial's process while it trains."""

    key: str
    process: subprocess.Popen
    log: Path
    log_file: IO[bytes]
    started: float


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
    """Start trials while fewer than `limit` run; returns the keys that did not succeed."""
    waiting, running, failed = list(keys), [], []
    try:
        while waiting or running:
            while waiting and len(running) < limit:
                running.append(_start(pipeline, waiting.pop(0), batch, root))
            time.sleep(_POLL_S)
            for trial in [t for t in running if t.process.poll() is not None]:
                running.remove(trial)
                if not _report(instance, pipeline, trial, batch):
                    failed.append(trial.key)
    finally:
        for trial in running:  # interrupted: one SIGINT, as a Ctrl-C on the trial's own
            # `dagster job execute`: its ranks checkpoint and stop (a second signal would
            # end them at once, hence each trial in its own session, see _start)
            with contextlib.suppress(ProcessLookupError):
                trial.process.send_signal(signal.SIGINT)
        for trial in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                trial.process.wait(timeout=60)
            trial.log_file.close()
    return failed


def _start(pipeline: Pipeline, key: str, batch: str, root: str) -> _Trial:
    tags = {"dagster/partition": key, RUN_TAG: batch}
    command = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "execute",
        *shlex.split(pipeline.location.cli_args()),
        "-j",
        pipeline.training_job,
        "--tags",
        json.dumps(tags),
    ]
    log = Path(root) / "sweeps" / pipeline.name / f"{_safe(key)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log_file = log.open("wb")
    env = {**os.environ, "TINYEXP_STORAGE_ROOT": root}
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    print(f"trial {key}: started (log {log})", flush=True)
    return _Trial(key, process, log, log_file, time.monotonic())


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)


def _report(instance: Any, pipeline: Pipeline, trial: _Trial, batch: str) -> bool:
    """One line for a finished trial (its run's status and id); the log's tail on failure."""
    import dagster as dg

    trial.log_file.close()
    runs = instance.get_runs(
        dg.RunsFilter(tags={RUN_TAG: batch, "dagster/partition": trial.key}), limit=1
    )
    seconds = time.monotonic() - trial.started
    status = runs[0].status.value if runs else f"no run recorded (exit {trial.process.returncode})"
    run = f", run {runs[0].run_id}" if runs else ""
    ok = bool(runs) and runs[0].status == dg.DagsterRunStatus.SUCCESS
    print(f"trial {trial.key}: {status} in {seconds:.0f} s{run}", flush=True)
    if not ok:
        lines = trial.log.read_text(errors="replace").splitlines()[-_LOG_TAIL:]
        print("\n".join(f"  | {line}" for line in lines), file=sys.stderr)
    return ok


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
