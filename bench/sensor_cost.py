"""Sensor tick cost at 1, 100 and 1000 runs, persistence included (issue 7 item 6, issue 14).

A tick is what the sensor daemon does for one sensor: evaluate it (`evaluate_tick` on a
`dg.build_sensor_context` with the instance, the cursor and the resources) and write what
it returned to the instance, as `dagster._daemon.sensor` does: every `AssetObservation` goes
to the event log through `instance.report_runless_asset_event`. (The daemon's tick record
and cursor update, one row each, are not included.) Timed from evaluation start to the last
write.

For each storage backend and each size N: a fresh Dagster instance holding N STARTED
training runs, and Redis (an embedded redis-server, flushed between sizes) holding their
progress, written by `RedisProgressReporter` as a trainer writes it (start, a step, an
epoch end, a checkpoint: the run hash, the active set and two stream events per run).
Ticks alternate between `training_progress_sensor` (cursor before every event, so each tick
turns its first batch of events into observations and persists them) and
`stalled_training_sensor` (every run active and healthy: each tick checks every run).

Backends: SQLite in a directory on disk (the storage `dagster dev` uses; the file system
type is recorded, and a memory file system is refused), and Postgres
(`$TINYEXP_TEST_POSTGRES_URL`, default postgresql://postgres@127.0.0.1:5432/test; a fresh
database is created on that server and dropped after). Target: < 1 s per tick at 1000 runs,
the whole 95% interval of the tick time below it.

    .venv/bin/python -m bench.sensor_cost [--ticks 10] [--sizes 1 100 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.common import embedded_redis, redis_client
from bench.names import CODE_LOCATION, TRAINED_MODEL, TRAINING_JOB
from bench.results import Run, add_results_arg
from bench.stats import value_against_target

TARGET_S = 1.0
POSTGRES_ENV = "TINYEXP_TEST_POSTGRES_URL"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def filesystem_type(path: str | Path) -> str:
    """The type of the file system holding `path` (the longest matching mount point)."""
    path, best, kind = os.path.realpath(path), "", "unknown"
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, fstype, *_ = line.split()
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best):
                best, kind = point, fstype
    return kind


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server of `server_url`, dropped after; yields the
    URL Dagster takes (SQLAlchemy's psycopg2 driver named)."""
    import psycopg2

    name = f"tinyexp_bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        scheme, rest = server_url.split("://", 1)
        parts = urlsplit(f"postgresql+psycopg2://{rest}" if scheme.startswith("postgres") else "")
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextlib.contextmanager
def instance_on(backend: str, home: str) -> Iterator[Any]:
    """A Dagster instance whose runs and event log live on `backend`."""
    import dagster as dg

    if backend == "sqlite":
        kind = filesystem_type(home)
        if kind in MEMORY_FILESYSTEMS:
            raise RuntimeError(f"{home} is on {kind}: the SQLite case needs a disk directory")
        with dg.instance_for_test(temp_dir=home) as instance:
            yield instance
        return
    with postgres_database(os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES) as url:
        overrides = {"storage": {"postgres": {"postgres_url": url}}}
        with dg.instance_for_test(overrides=overrides, temp_dir=home) as instance:
            yield instance


def populate(instance: Any, url: str, num_runs: int) -> None:
    """N STARTED Dagster runs and their progress in Redis, as trainers write it."""
    import importlib

    import dagster as dg

    from tinyexp_core.progress import RedisProgressReporter

    job = importlib.import_module(CODE_LOCATION).defs.resolve_job_def(TRAINING_JOB)
    first = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)
    for index in range(num_runs):
        # Copies of one run record: planning the job again for each run only slows setup.
        run = first if index == 0 else instance.add_run(first._replace(run_id=str(uuid.uuid4())))
        reporter = RedisProgressReporter(url, run.run_id, throttle_s=0.0)
        reporter.start(asset=TRAINED_MODEL, num_epochs=5, num_steps=100, world_size=2)
        reporter.step(epoch=0, step=99, loss=0.5, lr=1e-3, samples_per_s=400.0)
        reporter.epoch_end(epoch=0, loss=0.5, metrics={"val_accuracy": 0.9, "best_metric": 0.9})
        reporter.checkpoint(path=f"/runs/{run.run_id}/last.pt", epoch=0, best_metric=0.9)
        reporter.close()


def daemon_tick(sensor: Any, instance: Any, resources: dict, cursor: str | None) -> tuple:
    """Evaluate one tick and persist its asset events as the daemon does; (seconds, of them
    evaluating, the tick's data)."""
    import dagster as dg

    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    start = time.perf_counter()
    data = sensor.evaluate_tick(context)
    evaluated = time.perf_counter()
    for event in data.asset_events:
        instance.report_runless_asset_event(event)
    end = time.perf_counter()
    return end - start, evaluated - start, data


def drain_backlog(sensor: Any, instance: Any, resources: dict, num_runs: int) -> dict:
    """From the stream's start, daemon-like ticks carrying the cursor until the backlog is
    empty (`tinyexp_dagster.sensors.progress_backlog`): how many ticks, the slowest one."""
    from tinyexp_dagster.sensors.progress_backlog import Backlog

    cursor, times = "0-0", []
    while len(times) <= 2 * num_runs + 2:  # more: the backlog does not empty
        seconds, _, data = daemon_tick(sensor, instance, resources, cursor)
        times.append(seconds)
        cursor = data.cursor or cursor
        if not data.asset_events and not Backlog.parse(cursor).pending:
            return {"ticks": len(times), "max_tick_s": max(times), "emptied": True}
    return {"ticks": len(times), "max_tick_s": max(times), "emptied": False}


def measure(backend: str, url: str, storage: str, num_runs: int, ticks: int) -> dict[str, Any]:
    from tinyexp_dagster.resources import (
        RedisProgressResource,
        StallSettingsResource,
        StorageResource,
    )
    from tinyexp_dagster.sensors import stalled_training_sensor, training_progress_sensor

    Path(storage).mkdir(parents=True, exist_ok=True)
    client = redis_client(url)
    client.flushdb()
    client.close()
    resources = {
        "redis": RedisProgressResource(url=url),
        "storage": StorageResource(root=storage),
        "stalls": StallSettingsResource(),
    }
    sensors = {"training_progress_sensor": training_progress_sensor}
    sensors["stalled_training_sensor"] = stalled_training_sensor
    cursors = {"training_progress_sensor": "0-0", "stalled_training_sensor": None}
    times: dict[str, list[float]] = {name: [] for name in sensors}
    evaluate: dict[str, list[float]] = {name: [] for name in sensors}
    work: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-sensor-home-", dir=storage) as home,
        instance_on(backend, home) as instance,
    ):
        started = time.perf_counter()
        populate(instance, url, num_runs)
        setup_s = time.perf_counter() - started
        for index in range(ticks + 1):  # the first round warms up
            names = list(sensors) if index % 2 == 0 else list(sensors)[::-1]
            for name in names:
                seconds, evaluating, data = daemon_tick(
                    sensors[name], instance, resources, cursors[name]
                )
                if index:
                    times[name].append(seconds)
                    evaluate[name].append(evaluating)
                work[name] = _describe(data)
        drain = drain_backlog(sensors["training_progress_sensor"], instance, resources, num_runs)
        persisted = _persisted_observations(instance)
    return {
        "drain": drain,
        "tick_s": times,
        "of_which_evaluate_s": evaluate,
        "work": work,
        "setup_s": setup_s,
        "filesystem": filesystem_type(storage),
        "observations_in_event_log": persisted,
    }


def _persisted_observations(instance: Any) -> int:
    """Observations of the trained-model asset in the event log: proof the ticks wrote."""
    import dagster as dg

    key = dg.AssetKey.from_user_string(TRAINED_MODEL)
    count = len(
        instance.fetch_observations(key, limit=10_000).records
    )  # the most one query returns
    if count == 0:
        raise RuntimeError("the progress sensor's ticks persisted no observation")
    return count


def _describe(data: Any) -> str:
    if data.asset_events:
        return f"{len(data.asset_events)} observations persisted"
    if data.run_requests:
        return f"{len(data.run_requests)} run requests"
    return (data.skip_message or "")[:80]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=10, help="measured ticks per sensor and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument(
        "--backends", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"]
    )
    parser.add_argument("--dir", default=None, help="disk directory for SQLite (default /tmp)")
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.ticks < 2:
        parser.error("--ticks must be >= 2 for an interval")

    run = Run("sensor_cost", {k: v for k, v in vars(args).items() if k != "results_dir"})
    raw: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sensors-", dir=args.dir) as tmp:
        with embedded_redis(Path(tmp) / "redis-root") as url:
            for backend in args.backends:
                for size in args.sizes:
                    res = measure(backend, url, str(Path(tmp) / "storage"), size, args.ticks)
                    raw[f"{backend}/{size}"] = res
                    print(f"{backend}, {size} runs: {res['work']}", flush=True)
    largest = max(args.sizes)
    comparisons = []
    for backend in args.backends:
        res = raw[f"{backend}/{largest}"]
        for sensor, times in res["tick_s"].items():
            comparisons.append(
                value_against_target(
                    f"6. {sensor} tick at {largest} runs, persistence included, {backend}",
                    times,
                    target=TARGET_S,
                    direction="lower",
                    unit="s",
                    what=f"seconds per daemon-like tick ({res['work'][sensor]})",
                )
            )
    drains = "; ".join(
        f"{key}: {res['drain']['ticks']} ticks, slowest {res['drain']['max_tick_s']:.2f} s"
        + ("" if res["drain"]["emptied"] else ", NOT emptied")
        for key, res in raw.items()
    )
    filesystems = {res["filesystem"] for key, res in raw.items() if key.startswith("sqlite")}
    notes = (
        f"Daemon-like ticks (evaluation + `report_runless_asset_event` of every observation), "
        f"{args.ticks} per sensor, size and backend after one warm-up tick, the two sensors "
        f"alternating; sizes {args.sizes} runs. SQLite on a {', '.join(filesystems) or '-'} "
        "directory; Postgres on a fresh database of the server named by "
        f"`{POSTGRES_ENV}`. The value is the geometric mean tick time; its interval is the "
        "t-interval on log tick times. What the last tick of each did, every size's tick "
        "times, and how much of each tick was the evaluation (the rest is persistence: "
        "`of_which_evaluate_s`) are in the raw results. The progress sensor's tick is "
        "bounded: it reads new events for at most `READ_BUDGET_S` and emits at most "
        "`MAX_OBSERVATIONS_PER_TICK` observations; what it cannot emit yet waits in the "
        "cursor's backlog, at most two slots per run (newest epoch end, outcome), so the "
        "backlog of N active runs empties in about 2N / cap ticks once they slow down "
        f"(`drain` in the raw results: {drains})."
    )
    run.save(raw, comparisons, args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
