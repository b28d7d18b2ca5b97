"""DDP on 2 Ray workers vs `torchrun --nproc-per-node 2`, same bare loop (issue 7, item 2).

Ray: `bench.ddp_exp.BareLoopExp` launched by `RayLauncher` on 2 workers x 1 CPU (placement
group, rank environment, TinyExp's CPU accelerator: gloo DDP). torchrun: `bench/bare_loop.py`
with its own gloo process group. Both: the MNIST example's network on the same prepared
synthetic tensors, batch 32 per rank, 1 torch thread per rank, loopback rendezvous. The two
jobs run at the same time and take turns, one epoch each, so that both see the same machine
(this one is shared and noisy). Steady state = every epoch but the first; the ratio is the
median of per-epoch ratios. Target: >= 0.95 of torchrun's samples/s.

    .venv/bin/python -m bench.ddp_scaling [--reps 2] [--epochs 5] [--num-samples 4096]
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
    prepare_data,
    python,
    report_result,
    verdict,
    write_section,
)

TARGET = 0.95
WORKERS = 2


def on_ray(prepared: str, epochs: int, batch_size: int, turn_file: str) -> list[float]:
    from bench.ddp_exp import BareLoopExp
    from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec

    exp = BareLoopExp(
        prepared_path=prepared,
        num_epochs=epochs,
        batch_size=batch_size,
        turn_file=turn_file,
        turn_me="ray",
        turn_other="torchrun",
    )
    exp.accelerator_cfg.accelerator = "cpu"
    spec = RayLaunchSpec(num_workers=WORKERS, num_cpus_per_worker=1.0)
    return RayLauncher(spec).run(exp)[0]


def start_torchrun(
    prepared: str, epochs: int, batch_size: int, turn_file: str, log: Path
) -> subprocess.Popen:
    from tinyexp_core.redis_utils import free_port

    cmd = [python(), "-m", "torch.distributed.run", f"--nproc-per-node={WORKERS}"]
    cmd += ["--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m", "bench.bare_loop"]
    cmd += ["--data", prepared, "--epochs", str(epochs), "--batch-size", str(batch_size)]
    cmd += ["--threads", "1", "--turn-file", turn_file, "--turn-names", "torchrun", "ray"]
    # The Ray launcher pins gloo to loopback when every rank is local; so does this side.
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)


def one_rep(tmp: Path, prepared: str, rep: int, args: argparse.Namespace) -> dict[str, list]:
    """Both jobs at once, taking epoch turns; the first turn alternates between reps."""
    turn_file = tmp / f"turn-{rep}"
    turn_file.write_text("ray" if rep % 2 == 0 else "torchrun")
    log = tmp / f"torchrun-{rep}.log"
    proc = start_torchrun(prepared, args.epochs, args.batch_size, str(turn_file), log)
    try:
        ray_rates = on_ray(prepared, args.epochs, args.batch_size, str(turn_file))
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        raise RuntimeError(f"torchrun failed ({code}):\n{log.read_text()[-4000:]}")
    return {"ray": ray_rates, "torchrun": parse_result(log.read_text())["samples_per_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="runs of both jobs")
    parser.add_argument("--epochs", type=int, default=5, help="per run; the first is warm-up")
    parser.add_argument("--num-samples", type=int, default=4096, help="synthetic samples")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is excluded")

    started, load_before = time.perf_counter(), load_average()
    epochs: list[tuple[int, int, float, float]] = []  # rep, epoch, ray, torchrun samples/s
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        prepared = prepare_data(Path(tmp) / "datasets", "synthetic", args.num_samples)
        for rep in range(args.reps):
            rates = one_rep(Path(tmp), prepared, rep, args)
            for side, values in rates.items():
                print(f"rep {rep} {side}: {[round(r) for r in values]} samples/s", flush=True)
            pairs = zip(rates["ray"], rates["torchrun"], strict=True)
            epochs += [(rep, e, r, t) for e, (r, t) in enumerate(pairs) if e > 0]
    ratio = statistics.median(r / t for _, _, r, t in epochs)
    rows: list[list[object]] = [
        [rep + 1, epoch + 1, f"{r:.1f}", f"{t:.1f}", f"{r / t:.4f}"] for rep, epoch, r, t in epochs
    ]
    rows.append(
        [
            "median",
            "",
            f"{statistics.median(r for _, _, r, _ in epochs):.1f}",
            f"{statistics.median(t for _, _, _, t in epochs):.1f}",
            f"**{ratio:.4f}**",
        ]
    )
    header = ["run", "epoch", "2 Ray workers samples/s", "torchrun x2 samples/s", "ratio"]
    body = (
        f"{markdown_table(header, rows)}\n\n"
        f"Samples/s of both ranks together per epoch (epoch 1, the warm-up, left out), the "
        f"bare loop on {args.num_samples} synthetic 28x28 samples, batch {args.batch_size} "
        "per rank, 1 torch thread per rank, gloo over loopback. Ray: "
        "`bench.ddp_exp.BareLoopExp` through `RayLauncher` (2 workers x 1 CPU, TinyExp's CPU "
        "accelerator wraps the model in DDP). torchrun: `torchrun --nproc-per-node 2 -m "
        "bench.bare_loop`. Both jobs run at the same time and take turns, one epoch each "
        "(`bench.bare_loop.Turns`: a turn file; the job waiting for its turn sleeps), so "
        "compared epochs are seconds apart and see the same machine; which job goes first "
        "alternates between runs. The ratio is the median of the per-epoch ratios. With 2 "
        "ranks on 2 cores, anything else running on the machine slows the rank it lands on, "
        "and DDP waits for the slowest.\n\n"
        f"Ratio {ratio:.4f}, target >= {TARGET}: {verdict(ratio, TARGET)}. "
        f"Load average before / after: {load_before} / {load_average()}. "
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s."
    )
    report_result(
        "2. DDP scaling: 2 Ray workers / torchrun x2 samples/s",
        f"{ratio:.4f}",
        f">= {TARGET}",
        verdict(ratio, TARGET),
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
