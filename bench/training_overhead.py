"""Training overhead of the orchestrated path vs a bare PyTorch loop (issue 7, item 1).

Orchestrated: the `trained_model` asset materialized in this process with `dg.materialize`
(Dagster step, `RayDDPResource` -> `RayLauncher` -> one Ray worker actor, the accelerator,
the MNIST example's own epoch loop, a checkpoint every epoch, Redis progress on through an
embedded redis-server under a temporary storage root). Bare: `bench/bare_loop.py` in its own
process. Same network, prepared tensors (synthetic), batch size, optimizer and torch threads.

This machine is shared and its load swings within seconds, so the jobs run at the same time
and take turns, one epoch each (`bench.bare_loop.Turns`; the orchestrated side is
`bench.ddp_exp.TurnTakingMnistExp`, the example with a wait before each epoch): compared
epochs are seconds apart. A second bare loop in the cycle is an A/A control. The order of
the turns rotates through all six orders over the runs, and every job ends with an untimed
epoch, so no timed epoch overlaps another job's teardown. Steady state = every timed epoch
but the first; a pair is one epoch turn of each job, the ratio the orchestrated
epoch over the mean of the two bare ones (95% interval, verdict: `bench.stats`), the A/A
control the second bare loop over the first. Target: >= 0.97.

    .venv/bin/python -m bench.training_overhead [--reps 10] [--epochs 6] [--num-samples 4096]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bare_loop import parse_result
from bench.common import (
    TRAILING_EPOCHS,
    local_ray,
    prepare_data,
    python,
    redis_client,
    settle_local_ray,
    steady_malloc,
    stop_local_ray,
    timed_epochs,
    turn_order,
)
from bench.results import Run, add_results_arg
from bench.stats import compare

TARGET = 0.97
EXPERIMENT = "bench.ddp_exp:TurnTakingMnistExp"
PIPELINE = "bench"  # its own pipeline: pipeline_defs(PIPELINE, EXPERIMENT)
DATASET_OP, TRAIN_OP = f"{PIPELINE}__prepared_dataset", f"{PIPELINE}__trained_model"


def orchestrated(
    root: Path, redis_url: str, prepared: str, turn_file: Path, then: str, args: argparse.Namespace
) -> tuple[list[float], str]:
    """Materialize prepared_dataset + trained_model; per-epoch samples/s and progress status."""
    import dagster as dg

    from tinyexp_core.progress import read_run
    from tinyexp_dagster import pipeline_defs
    from tinyexp_dagster.resources import RayDDPResource, RedisProgressResource, StorageResource

    data = ["data_cfg.source=synthetic", f"data_cfg.num_samples={args.num_samples}"]
    overrides = [
        f"train_cfg.num_epochs={args.epochs + TRAILING_EPOCHS}",
        f"data_cfg.batch_size={args.batch_size}",
        f"turn_file={turn_file}",
        f"turn_next={then}",
    ]
    run_config = {
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        "ops": {
            DATASET_OP: {"config": {"overrides": data}},
            TRAIN_OP: {
                "config": {
                    "overrides": overrides,
                    "num_workers": 1,
                    "num_cpus_per_worker": float(args.threads),
                    "resume": "never",
                }
            },
        },
    }
    assets = list(pipeline_defs(PIPELINE, EXPERIMENT).assets)
    result = dg.materialize(
        assets,
        selection=[
            dg.AssetKey([PIPELINE, "prepared_dataset"]),
            dg.AssetKey([PIPELINE, "trained_model"]),
        ],
        run_config=run_config,
        resources={
            "ray": RayDDPResource(num_workers=1, num_cpus_per_worker=float(args.threads)),
            "redis": RedisProgressResource(url=redis_url),
            "storage": StorageResource(root=str(root)),
        },
    )
    trained_on = result.output_for_node(TRAIN_OP)["dataset_path"]
    if trained_on != prepared:
        raise RuntimeError(f"trained on {trained_on}, the bare loop reads {prepared}")
    (materialization,) = result.asset_materializations_for_node(TRAIN_OP)
    rows = materialization.metadata["per_epoch"].value.records
    rates = [float(r.data["samples_per_s"]) for r in rows]
    client = redis_client(redis_url)
    try:
        progress = read_run(client, result.run_id)
    finally:
        client.close()
    status = f"{progress.get('status', 'missing')} (epoch {progress.get('epoch', '?')})"
    return rates, status


def start_bare(
    name: str, then: str, prepared: str, turn_file: Path, log: Path, args: argparse.Namespace
) -> subprocess.Popen:
    epochs = str(args.epochs + TRAILING_EPOCHS)
    cmd = [python(), "-m", "bench.bare_loop", "--data", prepared, "--epochs", epochs]
    cmd += ["--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    cmd += ["--turn-file", str(turn_file), "--turn-names", name, then]
    # What Ray sets in a worker with that many CPUs: the two sides' processes match.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)


def one_rep(
    root: Path, redis_url: str, prepared: str, rep: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Three jobs at once, one epoch turn each: the orchestrated one and two bare loops (the
    second an A/A control); which goes first, and the order after it, changes every rep
    (`turn_order`)."""
    cycle = turn_order(("tinyexp", "bare", "bare2"), rep)
    after = {name: cycle[(i + 1) % len(cycle)] for i, name in enumerate(cycle)}
    turn_file = root / f"turn-{rep}"
    turn_file.write_text(cycle[0])
    procs = {
        name: start_bare(name, after[name], prepared, turn_file, root / f"{name}-{rep}.log", args)
        for name in ("bare", "bare2")
    }
    try:
        rates, status = orchestrated(root, redis_url, prepared, turn_file, after["tinyexp"], args)
        codes = {name: proc.wait(timeout=600) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    cpu_file = Path(f"{turn_file}.tinyexp.cpu")
    cpu = [float(line) for line in cpu_file.read_text().split()]
    result: dict[str, Any] = {"orchestrated": (rates, cpu), "status": status}
    for name, code in codes.items():
        log = (root / f"{name}-{rep}.log").read_text()
        if code != 0:
            raise RuntimeError(f"{name} failed ({code}):\n{log[-4000:]}")
        found = parse_result(log)
        result[name] = (found["samples_per_s"], found["cpu_samples_per_s"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="runs of the three jobs")
    parser.add_argument("--epochs", type=int, default=6, help="per run; the first is warm-up")
    parser.add_argument("--num-samples", type=int, default=4096, help="synthetic samples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--batch-size", type=int, default=32)
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is excluded")

    from bench.common import embedded_redis
    from tinyexp_core.data import read_manifest

    run = Run("training_overhead", {k: v for k, v in vars(args).items() if k != "results_dir"})
    sides = ("orchestrated", "bare", "bare2")
    # per side: wall and CPU samples/s of every steady-state epoch, in pair order
    wall: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    statuses = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        root = Path(tmp)
        with embedded_redis(root) as url, contextlib.ExitStack() as stack:
            stack.callback(stop_local_ray, root)  # the runs leave the root's Ray warm
            prepared = prepare_data(root / "datasets", "synthetic", args.num_samples)
            num_train = int(read_manifest(prepared).counts["train"])
            for rep in range(args.reps):
                # Untimed: the root's Ray running with its warm ranks ready, so no refill
                # (new processes importing torch) lands in a timed epoch.
                local_ray(root, warm=True)
                settle_local_ray(root)
                with steady_malloc():
                    res = one_rep(root, url, prepared, rep, args)
                for side in sides:
                    rates, cpu_rates = res[side]
                    print(f"rep {rep} {side}: {[round(r) for r in rates]} samples/s", flush=True)
                    wall[side] += timed_epochs(rates, args.epochs)
                    cpu[side] += timed_epochs(cpu_rates, args.epochs)
                statuses.append(res["status"])

    def mean_bare(values: dict[str, list[float]]) -> list[float]:
        # Against the mean of the two bare loops: a process's speed varies by itself.
        return [(a + b) / 2 for a, b in zip(values["bare"], values["bare2"], strict=True)]

    comparisons = [
        compare(
            "1. trained_model / bare loop, samples/s",
            wall["orchestrated"],
            mean_bare(wall),
            target=TARGET,
            direction="higher",
            control=(wall["bare2"], wall["bare"]),
            what="per-epoch samples/s, orchestrated over the two bare loops' mean",
        ),
        compare(
            "1. trained_model / bare loop, samples per CPU-second",
            cpu["orchestrated"],
            mean_bare(cpu),
            target=TARGET,
            direction="higher",
            control=(cpu["bare2"], cpu["bare"]),
            what="per-epoch samples per CPU-second of the training thread",
        ),
    ]
    notes = (
        f"The MNIST example's network on {args.num_samples} synthetic 28x28 samples (train "
        f"split {num_train}), batch {args.batch_size}, {args.threads} torch thread(s) on all "
        "sides; epoch 1 of each run is warm-up and left out, and each job runs one more, "
        "untimed epoch after its last timed one (no timed epoch overlaps a teardown). "
        "Orchestrated: the "
        "`trained_model` asset through `dg.materialize` (Dagster step, `RayDDPResource`, one "
        "Ray worker, the CPU accelerator, the example's own epoch loop, a checkpoint per "
        "epoch, Redis progress on: the runs' progress hashes ended "
        f"{', '.join(sorted(set(statuses)))}). Bare: `bench/bare_loop.py` in its own process; "
        "a second bare loop is the A/A control. The three jobs run at once and take turns, "
        "one epoch each (`bench.bare_loop.Turns`; which job goes first, and the order after "
        "it, rotates through all 6 orders over the runs: `bench.common.turn_order`); all run "
        "with the same glibc malloc settings (`bench.common.STEADY_MALLOC`). "
        "Validation and checkpoints happen between epochs, outside the timed loops: item 9 "
        "counts them. Ray runs its workers at nice 15, which counts against the "
        "orchestrated side on a busy machine."
    )
    run.save(
        {"samples_per_s": wall, "cpu_samples_per_s": cpu}, comparisons, args.results_dir, notes
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
