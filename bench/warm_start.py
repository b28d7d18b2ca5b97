"""Warm start: `retrain_job`'s time to first step on a Ray that outlives runs vs a plain
torchrun script's (issue 14).

Ours: `dagster job execute -m <code location> -j retrain_job` (1 epoch, the default 2 Ray
workers x 1 CPU, embedded Redis progress, already running as after a first run) on a
storage root where `tinyexp-dagster ray up` (`tinyexp_core.services.ray_head.start_head`)
keeps a local Ray running: the run joins it instead of starting one. Every run is checked to
have logged the warm start (a run that silently started its own Ray fails the benchmark).
Theirs: `bench/torchrun_script.py` under `torchrun --nproc-per-node 2` (the same model,
prepared tensors, batch and optimizer; `bench.torchrun_compare` runs it the same way).
Both read the digits dataset that `prepared_dataset` prepared once at setup.

The running Ray keeps its default pool of warm ranks (`tinyexp_core.services.ray_pool`: rank
processes started ahead with torch imported); each run of ours must log that it took both
ranks from it. After a run the pool starts replacements in the background: every side starts
only once the pool is full and idle again, so no side shares the machine with a refill; the
seconds each refill took after a run of ours are in the raw results.

A third peer, Ray Train: `bench/torchtrainer_startup.py` (`bench.startup`'s TorchTrainer
script) joining the same running Ray, so both Ray-based sides start warm.

A round runs ours, Ray Train and the torchrun script twice (the second torchrun run is the
A/A control), in an order that rotates every round; a pair is a round. Time to first step is
from a timestamp taken right before the subprocess is spawned to rank 0's first optimizer
step. Target: ours / torchrun's <= 2.0, with its 95% interval. The cold start (a Ray
started by the run) is `bench.startup`'s item (<= 0.6 of Ray Train's).

    .venv/bin/python -m bench.warm_start [--reps 6] [--epochs 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import dagster_events, embedded_server, first_marks, spawn_timed, turn_order
from bench.names import CODE_LOCATION, RETRAIN_JOB
from bench.results import Run, add_results_arg
from bench.startup import (
    DAGSTER,
    OURS,
    dagster_env,
    phases,
    relative,
    run_config,
    setup,
    theirs,
)
from bench.stats import compare
from bench.torchrun_compare import latest_run_id, torchrun

TARGET = 2.0
SIDES = ("ours", "torchrun", "torchrun2", "raytrain")
WARM_LOG = "warm start: reusing the local Ray at"  # RayDDPResource.run_address's line
WARM_RANKS_LOG = "warm ranks: 2 of 2 ranks taken"  # RayLauncher's line
REFILL_TIMEOUT_S = 180.0
# bench.startup's phases, as they are on the running Ray with its warm ranks.
_WARM_LABELS = {
    "ray_ready": "Ray connect (`import ray`, `ray.init` to the running local Ray)",
    "actors_ready": "warm ranks taken from the pool, log sink actor start",
    "pg_rank0": "rank setup: unpickle experiment (torch already imported), logger, process group",
}
WARM = tuple((_WARM_LABELS.get(mark, label), mark) for label, mark in OURS)


def ours(tmp: Path, rep: int, epochs: int, address: str) -> dict[str, float]:
    timing = tmp / f"ours-{rep}.txt"
    config = tmp / "retrain.yaml"
    config.write_text(run_config(epochs))
    cmd = [DAGSTER, "job", "execute", "-m", CODE_LOCATION, "-j", RETRAIN_JOB]
    start, end, _ = spawn_timed([*cmd, "-c", str(config)], env=dagster_env(tmp, timing))
    check_warm(tmp / "dagster_home", address)
    marks = {**dagster_events(tmp / "dagster_home"), **first_marks(timing)}
    return relative(marks, start, end)


def check_warm(dagster_home: Path, address: str) -> None:
    """Fail unless the latest run logged that it joined the Ray at `address`."""
    import dagster as dg

    run_id = latest_run_id(dagster_home)
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        messages = [entry.user_message for entry in instance.all_logs(run_id)]
    finally:
        instance.dispose()
    if not any(f"{WARM_LOG} {address}" in m for m in messages):
        raise RuntimeError(f"run {run_id} did not join the running Ray at {address}")
    if not any(WARM_RANKS_LOG in m for m in messages):
        raise RuntimeError(f"run {run_id} did not take its 2 ranks from the warm pool")


def wait_for_full_pool(pool: Any) -> float:
    """Seconds until the pool has all its warm ranks ready and none lent out."""
    from tinyexp_core.services.ray_pool import pool_status

    start = time.perf_counter()
    while time.perf_counter() - start < REFILL_TIMEOUT_S:
        s = pool_status(pool)
        if s["ready"] == s["size"] and not s["starting"] and not s["lent"]:
            return time.perf_counter() - start
        time.sleep(0.25)
    raise RuntimeError(f"the warm pool did not refill within {REFILL_TIMEOUT_S:g} s: {s}")


def main(argv: list[str] | None = None) -> int:
    from tinyexp_core.launchers.ray_session import ray_session
    from tinyexp_core.services.ray_head import start_head, stop_head
    from tinyexp_core.services.ray_pool import find_pool

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6, help="rounds (>= 2 for an interval)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs each side trains")
    add_results_arg(parser)
    args = parser.parse_args(argv)

    bench_run = Run("warm_start", {k: v for k, v in vars(args).items() if k != "results_dir"})
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    refill_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as name, ExitStack() as stack:
        tmp = Path(name)
        try:
            prepared = setup(tmp)
            head, _ = start_head(tmp / "root")  # the storage root dagster_env names
            stack.enter_context(ray_session(head.address))  # this process watches the pool
            pool = find_pool()
            if pool is None:
                raise RuntimeError(f"the Ray at {head.address} has no warm-rank pool")
            wait_for_full_pool(pool)
            for rep in range(args.reps):
                for side in turn_order(SIDES, rep):
                    wait_for_full_pool(pool)  # no side shares the CPUs with a refill
                    if side == "ours":
                        res = ours(tmp, rep, args.epochs, head.address)
                    elif side == "raytrain":  # Ray Train on the same running Ray
                        res = theirs(tmp, f"{side}-{rep}", prepared, args.epochs, head.address)
                    else:
                        found = torchrun(tmp, f"{side}-{rep}", args.epochs, prepared)
                        res = {"first_step_rank0": found["first_step_s"], "exit": found["job_s"]}
                    runs[side].append(res)
                    if side == "ours":
                        refill_s.append(wait_for_full_pool(pool))
                    print(
                        f"rep {rep} {side}: first step at {res['first_step_rank0']:.2f} s, "
                        f"exit at {res['exit']:.2f} s",
                        flush=True,
                    )
        finally:
            stack.close()  # disconnect before the Ray goes
            stop_head(tmp / "root")
            embedded_server(tmp / "root").stop()
    first = {side: [r["first_step_rank0"] for r in rs] for side, rs in runs.items()}
    comparisons = [
        compare(
            f"11. time to first step, {RETRAIN_JOB} on a warm Ray / torchrun script",
            first["ours"],
            first["torchrun"],
            target=TARGET,
            direction="lower",
            control=(first["torchrun2"], first["torchrun"]),
            what="seconds from process spawn to rank 0's first optimizer step, ours (a local "
            "Ray already running) over the torchrun script's",
        ),
        compare(
            f"11. time to first step, {RETRAIN_JOB} / Ray Train, both on the same warm Ray",
            first["ours"],
            first["raytrain"],
            target=None,
            direction="lower",
            control=(first["torchrun2"], first["torchrun"]),
            what="seconds from process spawn to rank 0's first optimizer step, ours over a Ray "
            "Train TorchTrainer script's (bench/torchtrainer_startup.py), both joining the "
            "local Ray that was already running; the A/A control is the torchrun pair",
        ),
    ]
    raw = {
        "first_step_s": first,
        "exit_s": {side: [r["exit"] for r in rs] for side, rs in runs.items()},
        "phases_s": {"ours": phases(WARM, runs["ours"])},
        "pool_refill_after_ours_s": refill_s,
    }
    notes = (
        "Seconds from a timestamp taken right before the subprocess is spawned to rank 0's "
        "first optimizer step. Both sides: the MNIST example's network on the same prepared "
        "digits tensors, 2 ranks x 1 CPU, 1 torch thread per rank, batch 32 per rank, gloo "
        f"over loopback, {args.epochs} epoch(s). Ours: the whole `{RETRAIN_JOB}` on a local "
        "Ray that `tinyexp-dagster ray up` started before the first round (each run logged "
        "that it joined it and took both ranks from its pool of warm ranks; every side "
        "started with the pool full and idle); theirs: `bench/torchrun_script.py` under "
        "torchrun, and a Ray Train "
        "TorchTrainer script (`bench/torchtrainer_startup.py`) joining the same running Ray. "
        "The seconds of each phase of ours and every run's exit time are in the raw results."
    )
    bench_run.save(raw, comparisons, args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
