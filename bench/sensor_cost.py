"""Sensor tick cost with 1, 100 and 1000 runs' progress in Redis (issue 7, item 6).

For each size N: a fresh Dagster instance on SQLite in a temporary directory (the storage
`dagster dev` uses by default) holding N STARTED `training_pipeline` runs, and Redis (an
embedded redis-server, flushed between sizes) holding their progress, written by
`RedisProgressReporter` as a trainer writes it (start, a step, an epoch end, a checkpoint:
the run hash, the active set and two stream events per run). Then, in alternating order,
ticks of `training_progress_sensor` (cursor before every event, so each tick turns the
first `MAX_EVENTS_PER_TICK` events into observations) and `stalled_training_sensor` (every
run active and healthy, so each tick checks every run), built with `dg.build_sensor_context`
and evaluated as the daemon does. Target: < 0.5 s per tick at 1000 runs.

    .venv/bin/python -m bench.sensor_cost [--ticks 5] [--sizes 1 100 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import load_average, markdown_table, report_result, write_section

TARGET_S = 0.5


def populate(instance: Any, url: str, num_runs: int) -> None:
    """N STARTED Dagster runs and their progress in Redis, as trainers write it."""
    import dagster as dg

    from tinyexp_core.progress import RedisProgressReporter
    from tinyexp_dagster.definitions import defs

    job = defs.resolve_job_def("mnist_training_pipeline")
    config = {"ops": {"trained_model": {"config": {"overrides": ["train_cfg.num_epochs=5"]}}}}
    first = instance.create_run_for_job(job, run_config=config, status=dg.DagsterRunStatus.STARTED)
    for index in range(num_runs):
        # Copies of one run record: planning the job again for each run only slows setup.
        run = first if index == 0 else instance.add_run(first._replace(run_id=str(uuid.uuid4())))
        reporter = RedisProgressReporter(url, run.run_id, throttle_s=0.0)
        reporter.start(asset="trained_model", num_epochs=5, num_steps=100, world_size=2)
        reporter.step(epoch=0, step=99, loss=0.5, lr=1e-3, samples_per_s=400.0)
        reporter.epoch_end(epoch=0, loss=0.5, metrics={"val_accuracy": 0.9, "best_metric": 0.9})
        reporter.checkpoint(path=f"/runs/{run.run_id}/last.pt", epoch=0, best_metric=0.9)
        reporter.close()


def tick_seconds(sensor: Any, instance: Any, resources: dict, cursor: str | None) -> tuple:
    import dagster as dg

    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    start = time.perf_counter()
    data = sensor.evaluate_tick(context)
    return time.perf_counter() - start, data


def measure_size(url: str, storage: str, num_runs: int, ticks: int) -> dict[str, Any]:
    import dagster as dg

    from tinyexp_core.redis_client import make_client
    from tinyexp_dagster.resources import RedisProgressResource, StorageResource
    from tinyexp_dagster.sensors import stalled_training_sensor, training_progress_sensor

    client = make_client(url)
    client.flushdb()
    client.close()
    resources = {"redis": RedisProgressResource(url=url), "storage": StorageResource(root=storage)}
    # tmpfs when there is one: SQLite's fsync per inserted run only slows the setup down.
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with (
        tempfile.TemporaryDirectory(dir=shm) as home,
        dg.instance_for_test(temp_dir=home) as instance,
    ):
        started = time.perf_counter()
        populate(instance, url, num_runs)
        setup_s = time.perf_counter() - started
        sensors = {"training_progress_sensor": training_progress_sensor}
        sensors["stalled_training_sensor"] = stalled_training_sensor
        cursors = {"training_progress_sensor": "0-0", "stalled_training_sensor": None}
        times: dict[str, list[float]] = {name: [] for name in sensors}
        work: dict[str, str] = {}
        for index in range(ticks + 1):  # the first round warms up
            names = list(sensors) if index % 2 == 0 else list(sensors)[::-1]
            for name in names:
                seconds, data = tick_seconds(sensors[name], instance, resources, cursors[name])
                if index:
                    times[name].append(seconds)
                work[name] = _describe(data)
    return {"times": times, "work": work, "setup_s": setup_s}


def _describe(data: Any) -> str:
    if data.asset_events:
        return f"{len(data.asset_events)} observations"
    if data.run_requests:
        return f"{len(data.run_requests)} run requests"
    return (data.skip_message or "")[:70]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=5, help="measured ticks per sensor and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)

    from tinyexp_core.redis_server import EmbeddedRedis
    from tinyexp_dagster.sensors import MAX_EVENTS_PER_TICK

    started, load_before = time.perf_counter(), load_average()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-sensors-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis-root")
        try:
            url = server.ensure()
            for size in args.sizes:
                results[size] = measure_size(url, str(Path(tmp) / "storage"), size, args.ticks)
                medians = {
                    k: f"{statistics.median(v):.3f}" for k, v in results[size]["times"].items()
                }
                print(f"{size} runs: {medians} s", flush=True)
        finally:
            server.stop()
    rows = []
    for size, res in results.items():
        for name, times in res["times"].items():
            rows.append(
                [
                    name,
                    size,
                    f"{statistics.median(times):.4f}",
                    f"{max(times):.4f}",
                    res["work"][name],
                ]
            )
    largest = max(args.sizes)
    worst = max(statistics.median(t) for t in results[largest]["times"].values())
    met = "met" if worst < TARGET_S else "missed"
    body = (
        markdown_table(
            ["sensor", "runs", "tick s (median)", "tick s (max)", "what a tick did"], rows
        )
        + "\n\n"
        f"Ticks evaluated with `sensor.evaluate_tick(dg.build_sensor_context(...))` against a "
        "Dagster instance on SQLite in a temporary directory and an embedded redis-server on "
        f"loopback; median and max of {args.ticks} ticks after one warm-up tick, the two "
        "sensors alternating. Every run is a STARTED `training_pipeline` run of that instance "
        "with a fresh heartbeat, so the stall sensor checks all of them each tick; the progress "
        f"sensor starts from before all events and handles at most {MAX_EVENTS_PER_TICK} per "
        "tick (2 events per run: `epoch_end` becomes an observation, `checkpoint` is skipped).\n\n"
        f"Slowest median tick at {largest} runs: {worst:.3f} s, target < {TARGET_S} s: {met}. "
        f"Load average before / after: {load_before} / {load_average()}. "
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s."
    )
    report_result(
        f"6. Sensor cost: slowest tick at {largest} runs", f"{worst:.3f} s", f"< {TARGET_S} s", met
    )
    command = f".venv/bin/python -m bench.sensor_cost --ticks {args.ticks}"
    if args.no_write:
        print(body)
    else:
        write_section("sensor_cost", "6. Sensor cost", body, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
