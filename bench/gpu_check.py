"""GPU check (issue 7 item 8, issue 24): one script, under 5 minutes on one GPU.

    .venv/bin/python -m bench.gpu_check [--reps 3] [--epochs 3] [--budget-s 270]

Refuses, exit code 2, saving nothing, when torch sees no CUDA device. Measures, on the
CUDA device(s) of this machine:

1. first step: with `--launcher ray`, seconds from `RayLauncher.run` to rank 0's first
   optimizer step of the MNIST example (`accelerator_cfg.accelerator=ddp`, bf16) on 1 GPU,
   on a Ray this script started once (so not Ray's own start); with `--launcher local`,
   seconds from starting a fresh Python process that runs the example through the local
   launcher (`launch_local`, what `python -m <module>` does) to its first optimizer step:
   interpreter, imports, CUDA context and cuDNN set-up included (no target either way);
2. steady step time vs a bare loop: the MNIST example through the launcher on 1 worker x 1
   GPU vs `bench/bare_loop.py` with the same network, data, batch and bf16 autocast on the
   same GPU in its own process, and the bare loop again (the A/A control); a round runs the
   three in an order that changes every round (`bench.common.turn_order`); steady state =
   every epoch but the first; ratio TinyExp / bare of samples/s (the inverse of step time),
   target >= 0.97;
3. NCCL all-reduce: `torch.distributed.all_reduce` of a 64 MiB float32 tensor on
   min(2, GPUs) ranks (one process per GPU, nccl), median of 20 after 5 warm-up calls, as
   bus bandwidth in GB/s (no target; with one GPU it shows that NCCL initializes and runs).

`--launcher auto` (the default) takes Ray when it is installed and the local launcher
when it is not: a GPU machine that has PyTorch but no Ray (or no way to install it) still
gets the check; the result records which launcher ran.

Rounds stop early when `--budget-s` is spent (the rounds run are recorded). The result is
saved as `gpu_check-<stamp>.json` like every benchmark (`bench.results`), with the commit.
`--device cpu` runs the same code (gloo, tiny sizes) as a smoke test of the script itself:
save it to a scratch `--results-dir`, its numbers are not a GPU's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bare_loop import parse_result
from bench.common import first_marks, free_port, prepare_data, python, run, turn_order
from bench.results import Run, add_results_arg
from bench.stats import compare, value_against_target

TARGET = 0.97
EXAMPLE = "tinyexp_core.examples.mnist_exp:Exp"
ALLREDUCE_MIB = 64
SIDES = ("tinyexp", "bare", "bare2")
CHILD_PREFIX = "GPU_CHECK_CHILD "
FIRST_STEP_FROM = {"ray": "RayLauncher.run, Ray running", "local": "a fresh process's start"}


def on_ray(overrides: list[str], gpu: bool, timing: Path) -> tuple[list[float], float]:
    """Per-epoch samples/s of the example through RayLauncher, and seconds to first step."""
    from tinyexp_core.config.factory import build_exp
    from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec
    from tinyexp_core.timing import ENV_TIMING_FILE

    os.environ[ENV_TIMING_FILE] = str(timing)  # the ranks mark their first step there
    exp = build_exp(EXAMPLE, overrides)
    spec = RayLaunchSpec(num_workers=1, num_cpus_per_worker=1.0, num_gpus_per_worker=float(gpu))
    start = time.time()
    summary = RayLauncher(spec).run(exp)[0]
    first_step = first_marks(timing)["first_step_rank0"] - start
    return [record.samples_per_s for record in summary.history], first_step


def local_child(overrides: list[str]) -> int:
    """`--child`: one run of the example through the local launcher in this fresh process;
    prints its per-epoch samples/s on one line."""
    from tinyexp_core.config.factory import build_exp
    from tinyexp_core.launchers.mp import launch_local

    summary = launch_local(build_exp(EXAMPLE, overrides))[0]
    rates = [record.samples_per_s for record in summary.history]
    print(CHILD_PREFIX + json.dumps({"samples_per_s": rates}), flush=True)
    return 0


def on_local(overrides: list[str], timing: Path) -> tuple[list[float], float]:
    """Per-epoch samples/s of the example in a fresh process through the local launcher,
    and seconds from that process's start to rank 0's first step."""
    from tinyexp_core.timing import ENV_TIMING_FILE

    start = time.time()
    out = run([python(), "-m", "bench.gpu_check", "--child", json.dumps(overrides)],
              env={ENV_TIMING_FILE: str(timing)})  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith(CHILD_PREFIX))
    rates = json.loads(line[len(CHILD_PREFIX) :])["samples_per_s"]
    return rates, first_marks(timing)["first_step_rank0"] - start


def allreduce_rank(rank: int, world: int, port: int, device: str, out: Any) -> None:
    """One rank of the all-reduce measurement; rank 0 stores the median seconds."""
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        numel = ALLREDUCE_MIB * 2**20 // 4 if cuda else 2**16
        tensor = torch.ones(numel, device=f"cuda:{rank}" if cuda else "cpu")
        times = []
        for i in range(25):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            dist.all_reduce(tensor)
            if cuda:
                torch.cuda.synchronize()
            if i >= 5:
                times.append(time.perf_counter() - t0)
        expected = float(world) ** 25  # ones, summed over `world` ranks 25 times
        if rank == 0:
            out["seconds"] = statistics.median(times)
            out["bytes"] = numel * 4
            out["correct"] = bool(torch.allclose(tensor[:1].cpu(), torch.tensor([expected])))
    finally:
        dist.destroy_process_group()


def allreduce(device: str) -> dict[str, Any]:
    import torch
    import torch.multiprocessing as mp

    world = min(2, torch.cuda.device_count()) if device == "cuda" else 2
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(allreduce_rank, args=(world, free_port(), device, out), nprocs=world)
        found = dict(out)
    # Bus bandwidth as nccl-tests defines it for all-reduce: bytes * 2 (n-1)/n per second.
    # One rank moves nothing: no bandwidth to report, only that NCCL ran and summed right.
    factor = 2 * (world - 1) / world
    found["bus_gb_per_s"] = found["bytes"] * factor / found["seconds"] / 1e9 if world > 1 else None
    found["world_size"] = world
    return found


def rounds(args: argparse.Namespace, tmp: Path, gpu: bool, deadline: float) -> dict[str, list]:
    """Rounds of TinyExp, bare, bare again, until `--reps` or the budget."""
    data = prepare_data(tmp / "datasets", "synthetic", 512 if not gpu else 60_000)
    batch = 256 if gpu else 32
    overrides = [f"train_cfg.num_epochs={args.epochs}", f"data_cfg.prepared_path={data}"]
    overrides += [f"data_cfg.batch_size={batch}", f"output_root={tmp / 'runs'}"]
    overrides += [f"accelerator_cfg.accelerator={'ddp' if gpu else 'cpu'}"]
    overrides += ["accelerator_cfg.mixed_precision=true", "progress_cfg.enabled=false"]
    bare_cmd = [python(), "-m", "bench.bare_loop", "--data", data, "--epochs", str(args.epochs)]
    bare_cmd += ["--batch-size", str(batch), "--threads", "1"]
    bare_cmd += ["--device", "cuda", "--bf16"] if gpu else ["--device", "cpu"]
    found: dict[str, list] = {side: [] for side in SIDES}
    found["first_step_s"] = []
    for rep in range(args.reps):
        if time.monotonic() > deadline and rep >= 2:
            print(f"budget spent: {rep} rounds", flush=True)
            break
        for side in turn_order(SIDES, rep):
            if side == "tinyexp":
                timing = tmp / f"timing-{rep}.txt"
                if args.launcher == "ray":
                    rates, first = on_ray(overrides, gpu, timing)
                else:
                    rates, first = on_local(overrides, timing)
                found["first_step_s"].append(first)
            else:
                rates = parse_result(run(bare_cmd))["samples_per_s"]
            found[side].append(statistics.mean(rates[1:]))
            print(f"rep {rep} {side}: {[round(r) for r in rates]} samples/s", flush=True)
    return found


def _launcher_session(args: argparse.Namespace) -> Any:
    """Ray started once for every round (`--launcher ray`); nothing for the local launcher."""
    if args.launcher != "ray":
        import contextlib

        return contextlib.nullcontext()
    from tinyexp_core.launchers.ray_session import ray_session

    return ray_session()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="rounds (>= 2 for an interval)")
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is warm-up")
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop rounds after this")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--launcher", choices=("auto", "ray", "local"), default="auto",
                        help="auto: ray when installed, else the local launcher")  # fmt: skip
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: one run
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.child:
        return local_child(json.loads(args.child))
    if args.launcher == "auto":
        args.launcher = "ray" if importlib.util.find_spec("ray") else "local"
    if args.epochs < 2 or args.reps < 2:
        parser.error("--epochs and --reps must be >= 2 (a warm-up epoch, an interval)")

    import torch

    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        print(f"refused: no CUDA device (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda}, sees none); nothing measured, nothing saved. Run it on "
              "a GPU machine; `--device cpu` only smoke-tests this script.",
              file=sys.stderr)  # fmt: skip
        return 2
    deadline = time.monotonic() + args.budget_s
    params = {k: v for k, v in vars(args).items() if k not in ("results_dir", "child")}
    bench_run = Run("gpu_check", params)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as name, _launcher_session(args):
        found = rounds(args, Path(name), gpu, deadline)
    reduce = allreduce(args.device)
    comparisons = [
        compare(
            "8. MNIST example on 1 GPU: TinyExp / bare loop, steady samples/s",
            found["tinyexp"],
            found["bare"],
            target=TARGET,
            direction="higher",
            control=(found["bare2"], found["bare"]),
            what="steady-state samples/s per run (1 / step time), TinyExp over the bare loop",
        ),
        value_against_target(
            f"8. first step of the MNIST example on 1 GPU ({FIRST_STEP_FROM[args.launcher]})",
            found["first_step_s"],
            target=None,
            direction="lower",
            unit="s",
            what=f"seconds from {FIRST_STEP_FROM[args.launcher]} to rank 0's first step",
        ),
    ]
    device = torch.cuda.get_device_name(0) if gpu else "CPU (smoke test of the script)"
    notes = (
        f"Device: {device}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"{torch.cuda.device_count() if gpu else 0} GPU(s). Launcher: {args.launcher}. "
        f"{len(found['tinyexp'])} rounds. "
        f"NCCL all-reduce ({'nccl' if gpu else 'gloo'}, {reduce['world_size']} rank(s), "
        f"{reduce['bytes'] / 2**20:.0f} MiB): median {reduce['seconds'] * 1e3:.2f} ms, "
        + (
            f"bus bandwidth {reduce['bus_gb_per_s']:.1f} GB/s"
            if reduce["bus_gb_per_s"]
            else "no bus bandwidth with one rank"
        )  # fmt: skip
        + f", result correct: {reduce['correct']}."
    )
    bench_run.save({**found, "allreduce": reduce}, comparisons, args.results_dir, notes)
    return 0 if reduce["correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
