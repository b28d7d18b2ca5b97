"""DDP on 2 Ray workers vs `torchrun --nproc-per-node 2`, same bare loop (issue 7, item 2).

Ray: `bench.ddp_exp.BareLoopExp` launched by `RayLauncher` on 2 workers x 1 CPU (placement
group, rank environment, TinyExp's CPU accelerator: gloo DDP). torchrun: `bench/bare_loop.py`
with its own gloo process group. Both: the MNIST example's network on the same prepared
synthetic tensors, batch 32 per rank, 1 torch thread per rank, loopback rendezvous. The
jobs (and a second torchrun, an A/A control) run at the same time and take turns, one epoch
each, so that all see the same machine (this one is shared and noisy). Steady state = every
epoch but the first; ratios are medians of per-epoch ratios. Target: >= 0.95 of torchrun's.

    .venv/bin/python -m bench.ddp_scaling [--reps 2] [--epochs 4] [--num-samples 4096]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bare_loop import parse_result
from bench.common import (
    load_average,
    markdown_table,
    noisy_verdict,
    prepare_data,
    python,
    report_result,
    steady_malloc,
    write_section,
)

TARGET = 0.95
WORKERS = 2


def on_ray(prepared: str, epochs: int, batch_size: int, turn_file: str, then: str) -> list:
    from bench.ddp_exp import BareLoopExp
    from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec

    exp = BareLoopExp(
        prepared_path=prepared,
        num_epochs=epochs,
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
    from tinyexp_core.redis_server import free_port

    cmd = [python(), "-m", "torch.distributed.run", f"--nproc-per-node={WORKERS}"]
    cmd += ["--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "bench.bare_loop"]
    cmd += ["--data", prepared, "--epochs", str(args.epochs)]
    cmd += ["--batch-size", str(args.batch_size), "--threads", "1"]
    cmd += ["--turn-file", turn_file, "--turn-names", name, then]
    # The Ray launcher pins gloo to loopback when every rank is local; so does this side.
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)


def one_rep(tmp: Path, prepared: str, rep: int, args: argparse.Namespace) -> dict[str, list]:
    """Three jobs at once, one epoch turn each: Ray and two torchruns (the second an A/A
    control); the torchruns swap places in the cycle between reps."""
    cycle = ["ray", "torchrun", "torchrun2"] if rep % 2 == 0 else ["ray", "torchrun2", "torchrun"]
    after = {name: cycle[(i + 1) % len(cycle)] for i, name in enumerate(cycle)}
    turn_file = tmp / f"turn-{rep}"
    turn_file.write_text("ray")
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
    parser.add_argument("--reps", type=int, default=2, help="runs of both jobs")
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is warm-up")
    parser.add_argument("--num-samples", type=int, default=4096, help="synthetic samples")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is excluded")

    started, load_before = time.perf_counter(), load_average()
    epochs: list[tuple[int, int, float, float, float]] = []  # rep, epoch, ray, torchrun x2
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        prepared = prepare_data(Path(tmp) / "datasets", "synthetic", args.num_samples)
        for rep in range(args.reps):
            with steady_malloc():
                rates = one_rep(Path(tmp), prepared, rep, args)
            for side, values in rates.items():
                print(f"rep {rep} {side}: {[round(r) for r in values]} samples/s", flush=True)
            runs = zip(rates["ray"], rates["torchrun"], rates["torchrun2"], strict=True)
            epochs += [(rep, e, r, t, t2) for e, (r, t, t2) in enumerate(runs) if e > 0]
    # Against the mean of the two torchruns: a job's speed varies by itself (see A/A).
    ratio = statistics.median(2 * r / (t + t2) for _, _, r, t, t2 in epochs)
    control = statistics.median(t2 / t for _, _, _, t, t2 in epochs)
    rows: list[list[object]] = [
        [rep + 1, epoch + 1, f"{r:.1f}", f"{t:.1f}", f"{t2:.1f}"]
        + [f"{2 * r / (t + t2):.4f}", f"{t2 / t:.4f}"]
        for rep, epoch, r, t, t2 in epochs
    ]
    rows.append(
        [
            "median",
            "",
            *(f"{statistics.median(e[i] for e in epochs):.1f}" for i in (2, 3, 4)),
            f"**{ratio:.4f}**",
            f"{control:.4f}",
        ]
    )
    header = [
        "run",
        "epoch",
        "2 Ray workers samples/s",
        "torchrun samples/s",
        "2nd torchrun samples/s",
        "ratio to the torchruns' mean",
        "A/A 2nd torchrun / torchrun",
    ]
    body = (
        f"{markdown_table(header, rows)}\n\n"
        f"Samples/s of both ranks together per epoch (epoch 1, the warm-up, left out), the "
        f"bare loop on {args.num_samples} synthetic 28x28 samples, batch {args.batch_size} "
        "per rank, 1 torch thread per rank, gloo over loopback. Ray: "
        "`bench.ddp_exp.BareLoopExp` through `RayLauncher` (2 workers x 1 CPU, TinyExp's CPU "
        "accelerator wraps the model in DDP). torchrun: `torchrun --nproc-per-node 2 -m "
        "bench.bare_loop`. All processes run with the same glibc malloc settings "
        "(`bench.common.STEADY_MALLOC`; see the note at the top of this page). Both jobs run "
        "at the same time and take turns, one epoch each, with a second torchrun job as an "
        "A/A control (`bench.bare_loop.Turns`: a turn file; a job waiting for its turn "
        "sleeps), so compared epochs are seconds apart and see the same machine; the two "
        "torchruns swap places in the cycle between runs. Ratios are medians of per-epoch "
        "ratios (Ray's epoch to the mean of the two torchrun epochs); the A/A control shows "
        "the noise floor of this machine. With 2 "
        "ranks on 2 cores, anything else running on the machine slows the rank it lands on, "
        "and DDP waits for the slowest.\n\n"
        f"Ratio {ratio:.4f} (A/A {control:.4f}), target >= {TARGET}: "
        f"{noisy_verdict(ratio, TARGET, control)}. "
        f"Load average before / after: {load_before} / {load_average()}. "
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s."
    )
    report_result(
        "2. DDP scaling: 2 Ray workers / torchrun x2 samples/s",
        f"{ratio:.4f} (A/A {control:.4f})",
        f">= {TARGET}",
        noisy_verdict(ratio, TARGET, control),
    )
    command = (
        f".venv/bin/python -m bench.ddp_scaling --reps {args.reps} --epochs {args.epochs} "
        f"--num-samples {args.num_samples}"
    )
    if args.no_write:
        print(body)
    else:
        write_section("ddp_scaling", "2. DDP scaling: Ray workers vs torchrun", body, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
