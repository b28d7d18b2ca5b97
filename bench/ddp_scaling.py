"""DDP on 2 Ray workers vs `torchrun --nproc-per-node 2`, same bare loop (issue 7, item 2).

Ray: `bench.ddp_exp.BareLoopExp` launched by `RayLauncher` on 2 workers x 1 CPU (placement
group, rank environment, TinyExp's CPU accelerator: gloo DDP). torchrun: `bench/bare_loop.py`
with its own gloo process group. Both: the MNIST example's network on the same prepared
synthetic tensors, batch 32 per rank, 1 torch thread per rank, loopback rendezvous. The
jobs (and a second torchrun, an A/A control) run at the same time and take turns, one epoch
each, so that all see the same machine (this one is shared and noisy); the order of the
turns rotates through all six orders over the runs, and every job ends with an untimed
epoch, so that no timed epoch overlaps another job's teardown. Steady state = every
timed epoch but the first; a pair is one epoch turn of each job, the ratio Ray's epoch over the
mean of the two torchrun epochs (95% interval, verdict: `bench.stats`), the A/A control the
second torchrun over the first. Target: >= 0.95 of torchrun's.

    .venv/bin/python -m bench.ddp_scaling [--reps 16] [--epochs 6] [--num-samples 4096]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bare_loop import parse_result
from bench.common import (
    TRAILING_EPOCHS,
    free_port,
    prepare_data,
    python,
    steady_malloc,
    timed_epochs,
    turn_order,
)
from bench.results import Run, add_results_arg
from bench.stats import compare

TARGET = 0.95
WORKERS = 2


def on_ray(prepared: str, epochs: int, batch_size: int, turn_file: str, then: str) -> list:
    from bench.ddp_exp import BareLoopExp
    from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec

    exp = BareLoopExp(
        prepared_path=prepared,
        num_epochs=epochs + TRAILING_EPOCHS,
        batch_size=batch_size,
        turn_file=turn_file,
        turn_me="ray",
        turn_next=then,
    )
    exp.accelerator_cfg.accelerator = "cpu"
    spec = RayLaunchSpec(num_workers=WORKERS, num_cpus_per_worker=1.0)
    return RayLauncher(spec).run(exp)[0]


def start_torchrun(
    name: str, then: str, prepared: str, args: argparse.Namespace, turn_file: str, log: Path
) -> subprocess.Popen:
    cmd = [python(), "-m", "torch.distributed.run", f"--nproc-per-node={WORKERS}"]
    cmd += ["--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "bench.bare_loop"]
    cmd += ["--data", prepared, "--epochs", str(args.epochs + TRAILING_EPOCHS)]
    cmd += ["--batch-size", str(args.batch_size), "--threads", "1"]
    cmd += ["--turn-file", turn_file, "--turn-names", name, then]
    # The Ray launcher pins gloo to loopback when every rank is local; so does this side.
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)


def one_rep(tmp: Path, prepared: str, rep: int, args: argparse.Namespace) -> dict[str, list]:
    """Three jobs at once, one epoch turn each: Ray and two torchruns (the second an A/A
    control); which goes first, and the order after it, changes every rep (`turn_order`)."""
    cycle = turn_order(("ray", "torchrun", "torchrun2"), rep)
    after = {name: cycle[(i + 1) % len(cycle)] for i, name in enumerate(cycle)}
    turn_file = tmp / f"turn-{rep}"
    turn_file.write_text(cycle[0])
    logs = {name: tmp / f"{name}-{rep}.log" for name in ("torchrun", "torchrun2")}
    procs = {
        name: start_torchrun(name, after[name], prepared, args, str(turn_file), log)
        for name, log in logs.items()
    }
    try:
        ray_rates = on_ray(prepared, args.epochs, args.batch_size, str(turn_file), after["ray"])
        result = {"ray": ray_rates}
        codes = {name: proc.wait(timeout=600) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, code in codes.items():
        if code != 0:
            raise RuntimeError(f"{name} failed ({code}):\n{logs[name].read_text()[-4000:]}")
        result[name] = parse_result(logs[name].read_text())["samples_per_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=16, help="runs of the three jobs")
    parser.add_argument("--epochs", type=int, default=6, help="per run; the first is warm-up")
    parser.add_argument("--num-samples", type=int, default=4096, help="synthetic samples")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is excluded")

    run = Run("ddp_scaling", {k: v for k, v in vars(args).items() if k != "results_dir"})
    sides = ("ray", "torchrun", "torchrun2")
    rates: dict[str, list[float]] = {side: [] for side in sides}  # steady-state epochs
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        prepared = prepare_data(Path(tmp) / "datasets", "synthetic", args.num_samples)
        for rep in range(args.reps):
            with steady_malloc():
                found = one_rep(Path(tmp), prepared, rep, args)
            for side in sides:
                print(f"rep {rep} {side}: {[round(r) for r in found[side]]} samples/s", flush=True)
                rates[side] += timed_epochs(found[side], args.epochs)
    torchrun_mean = [
        (a + b) / 2 for a, b in zip(rates["torchrun"], rates["torchrun2"], strict=True)
    ]
    comparison = compare(
        "2. 2 Ray workers / torchrun --nproc-per-node 2, samples/s",
        rates["ray"],
        torchrun_mean,
        target=TARGET,
        direction="higher",
        control=(rates["torchrun2"], rates["torchrun"]),
        what="per-epoch samples/s of both ranks, Ray over the two torchruns' mean",
    )
    notes = (
        f"The bare loop on {args.num_samples} synthetic 28x28 samples, batch "
        f"{args.batch_size} per rank, 1 torch thread per rank, gloo over loopback; epoch 1 of "
        "each run is warm-up and left out, and every job runs one more, untimed epoch after its "
        "last timed one, so no timed epoch overlaps another job's teardown. Ray: "
        "`bench.ddp_exp.BareLoopExp` through "
        "`RayLauncher` (2 workers x 1 CPU, TinyExp's CPU accelerator wraps the model in "
        "DDP). torchrun: `torchrun --nproc-per-node 2 -m bench.bare_loop`; a second torchrun "
        "job is the A/A control. The jobs run at once and take turns, one epoch each "
        "(`bench.bare_loop.Turns`; which job goes first, and the order after it, rotates "
        "through all 6 orders over the runs: `bench.common.turn_order`); all run with the "
        "same glibc malloc settings (`bench.common.STEADY_MALLOC`). With 2 ranks on 2 cores, "
        "anything else running on the machine slows the rank it lands on, and DDP waits for "
        "the slowest."
    )
    run.save({"samples_per_s": rates}, [comparison], args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
