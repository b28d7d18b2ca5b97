"""`tinyexp-dagster sweep NAME run|leaderboard`: train a sweep's trials without the daemon,
and rank them.

Each trial is one `dagster job execute` process (the pipeline's training job, the trial's
partition tag), so Dagster records it in the instance as any run; at most the pool's limit
(the sweep's `max_concurrent`, set by the pipeline's pool sensor) run at once. See
cli_sweep.py for the whole command.
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
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tinyexp_dagster.assets.sweep import BATCH_TAG
from tinyexp_dagster.cli_location import Pipeline

RUN_TAG = BATCH_TAG  # one value per `sweep run`: its runs, and their sweep board's scope
_POLL_S = 1.0
_LOG_TAIL = 25


@dataclass
class _Trial:
    """One trial's process while it trains."""

    key: str
    process: subprocess.Popen
    log: Path
    log_file: IO[bytes]
    started: float


def run_trials(instance: Any, pipeline: Pipeline, keys: list[str], root: str) -> int:
    """Train `keys` (in order, at most max_concurrent at once); 0 when all succeeded."""
    limit = pool_limit(instance, pipeline)
    print(f"{pipeline.name}: {len(keys)} trial(s), at most {limit} at once "
          f"(pool tinyexp_{pipeline.name}_sweep)", flush=True)  # fmt: skip
    if "prepared_dataset" in pipeline.assets and not _materialized(
        instance, pipeline, "prepared_dataset"
    ):
        print(f"{pipeline.name}/prepared_dataset: not materialized yet, preparing it", flush=True)
        if not materialize_in_process(instance, pipeline, "prepared_dataset").success:
            print(f"error: {pipeline.name}/prepared_dataset failed", file=sys.stderr)
            return 1
    batch = uuid.uuid4().hex[:12]
    try:
        with _ray_for(root, len(keys)):
            failed = _launch_all(instance, pipeline, keys, limit, batch, root)
    except KeyboardInterrupt:
        print(f"interrupted: the running trials were asked to stop; `tinyexp-dagster sweep "
              f"{pipeline.name}` shows their runs, `tinyexp-dagster resume <run id>` continues "
              "one", file=sys.stderr)  # fmt: skip
        return 130
    print_leaderboard(instance, pipeline)
    if failed:
        print(f"{len(failed)} trial(s) did not succeed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def pool_limit(instance: Any, pipeline: Pipeline) -> int:
    """The pool's slot count after the pipeline's own pool sensor set it (max_concurrent)."""
    import dagster as dg

    pool = f"tinyexp_{pipeline.name}_sweep"
    sensor = pipeline.location.definitions().get_sensor_def(f"{pipeline.name}_sweep_pool_sensor")
    sensor(dg.build_sensor_context(instance=instance))  # sets the limit, as the daemon would
    slots = instance.event_log_storage.get_concurrency_info(pool).slot_count
    return max(1, int(slots or 1))


def _materialized(instance: Any, pipeline: Pipeline, asset: str) -> bool:
    import dagster as dg

    key = dg.AssetKey([pipeline.name, asset])
    return instance.get_latest_materialization_event(key) is not None


@contextlib.contextmanager
def _ray_for(root: str, num_trials: int) -> Iterator[None]:
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


def _launch_all(
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


def print_rows(rows: list[list[str]]) -> None:
    """Print a table: a header row, then the rows, columns padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


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


def print_leaderboard(instance: Any, pipeline: Pipeline) -> int:
    """Refresh `<name>/sweep_leaderboard` and print its table."""
    import dagster as dg

    result = materialize_in_process(instance, pipeline, "sweep_leaderboard")
    if not result.success:
        print(f"error: {pipeline.name}/sweep_leaderboard failed (run {result.run_id})",
              file=sys.stderr)  # fmt: skip
        return 1
    event = instance.get_latest_materialization_event(
        dg.AssetKey([pipeline.name, "sweep_leaderboard"])
    )
    meta = event.asset_materialization.metadata
    columns = ("rank", "trial", "status", "epoch", "best", "overrides")
    rows = [[*columns[:4], f"best {meta['primary_metric'].value}", columns[5]]]
    for record in meta["leaderboard"].value.records:
        data = record.data
        rows.append([_cell(data.get(c)) for c in columns])
    print_rows(rows)
    leader = meta["leader"].value if "leader" in meta else ""
    print(f"leader: {leader or 'none yet'}  (run {result.run_id[:8]}; the UI shows it on "
          f"{pipeline.name}/sweep_leaderboard)")  # fmt: skip
    return 0


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4f}"  # NaN: no metric yet
    return str(value if value is not None else "-")
