"""GPU check (issue 7, item 8): the examples on CUDA through TinyExp vs a bare loop.

For a machine with a CUDA GPU (run `bash bench/gpu_check.sh`); not part of `make bench`.

- MNIST example (`tinyexp_core.examples.mnist_exp`) and ResNet-18 example
  (`tinyexp_core.examples.resnet_exp`, on a generated image folder) launched by `RayLauncher`
  on 1 worker x 1 GPU with `accelerator_cfg.accelerator=ddp` (CUDA device; nccl once there
  are 2 ranks) and `accelerator_cfg.mixed_precision=true` (bf16 autocast), vs
  `bench/bare_loop.py` with the same network, data, batch size and bf16 autocast on the
  same GPU, in its own process;
- with 2 or more GPUs also: the MNIST example on 2 Ray workers x 1 GPU (nccl DDP) vs
  `torchrun --nproc-per-node 2` of the bare loop with nccl.

Steady state = every epoch but the first (a run's value is their mean); a round runs the
TinyExp side and the bare loop twice (the second bare run is the A/A control), in an order
that rotates every round; ratios, intervals and verdicts as in `bench.stats`. The result is
saved as `gpu_check-<stamp>.json` (`bench.results`). `--device cpu` runs the same code paths
on the CPU with tiny sizes (a smoke test; save it to a scratch `--results-dir`).

    .venv/bin/python -m bench.gpu_check [--reps 4] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bare_loop import parse_result
from bench.common import free_port, prepare_data, python, run
from bench.results import Run, add_results_arg
from bench.stats import compare as paired

TARGET = 0.97


def on_ray(exp_path: str, overrides: list[str], workers: int, gpu: bool) -> list[float]:
    """Per-epoch samples/s of an example trained by RayLauncher."""
    from tinyexp_core.config import build_exp
    from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec

    exp = build_exp(exp_path, overrides)
    spec = RayLaunchSpec(
        num_workers=workers, num_cpus_per_worker=1.0, num_gpus_per_worker=1.0 if gpu else 0.0
    )
    summary = RayLauncher(spec).run(exp)[0]
    return [h["samples_per_s"] for h in summary["history"]]


def bare(args: list[str], workers: int) -> list[float]:
    """Per-epoch samples/s of the bare loop (torchrun with nccl for 2 ranks)."""
    cmd = [python(), "-m", "bench.bare_loop", *args]
    if workers > 1:
        launcher = [python(), "-m", "torch.distributed.run", f"--nproc-per-node={workers}"]
        launcher += ["--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m"]
        cmd = [*launcher, "bench.bare_loop", *args]
    return parse_result(run(cmd))["samples_per_s"]


def compare(name: str, ray_side: Any, bare_side: Any, reps: int) -> tuple[dict, dict]:
    """Rounds of TinyExp, bare, bare again (rotating); the comparison and the raw values."""
    sides: dict[str, list[float]] = {"tinyexp": [], "bare": [], "bare2": []}
    names = tuple(sides)
    for rep in range(reps):
        for side in names[rep % 3 :] + names[: rep % 3]:
            rates = ray_side() if side == "tinyexp" else bare_side()
            sides[side].append(statistics.mean(rates[1:]))
            print(f"{name} rep {rep} {side}: {[round(r) for r in rates]} samples/s", flush=True)
    comparison = paired(
        f"8. {name}: TinyExp / bare loop, samples/s",
        sides["tinyexp"],
        sides["bare"],
        target=TARGET,
        direction="higher",
        control=(sides["bare2"], sides["bare"]),
        what="steady-state samples/s per run, TinyExp over the bare loop",
    )
    return comparison, sides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4, help="rounds (>= 2 for an interval)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    add_results_arg(parser)
    args = parser.parse_args(argv)

    import torch

    from bench.input_pipeline import make_image_folder

    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU machine (or --device cpu for a smoke test)")
        return 2
    small = not gpu
    num_samples, images = (512, 64) if small else (60_000, 10_000)
    batches = {"mnist": 32 if small else 256, "resnet18": 16 if small else 128}
    accel = "ddp" if gpu else "cpu"
    common = [
        f"train_cfg.num_epochs={args.epochs}",
        f"accelerator_cfg.accelerator={accel}",
        "accelerator_cfg.mixed_precision=true",
        "progress_cfg.enabled=false",
    ]
    bare_common = ["--epochs", str(args.epochs), "--device", args.device, "--threads", "1"]
    bare_common += ["--bf16"] if gpu else []
    bench_run = Run("gpu_check", {k: v for k, v in vars(args).items() if k != "results_dir"})
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as name:
        tmp = Path(name)
        mnist_data = prepare_data(tmp / "datasets", "synthetic", num_samples)
        make_image_folder(tmp / "images", images, 64)
        from tinyexp_core.config import build_exp

        resnet = build_exp(
            "tinyexp_core.examples.resnet_exp:Exp",
            [f"data_cfg.root={tmp / 'images'}", "data_cfg.redis_cache=false"],
        )
        resnet_data = resnet.prepare_data(str(tmp)).path
        out = f"output_root={tmp / 'runs'}"
        mnist = [*common, out, f"data_cfg.prepared_path={mnist_data}"]
        mnist.append(f"data_cfg.batch_size={batches['mnist']}")
        res = [*common, out, f"data_cfg.prepared_path={resnet_data}"]
        res.append(f"data_cfg.batch_size={batches['resnet18']}")
        bare_mnist = [*bare_common, "--data", mnist_data, "--batch-size", str(batches["mnist"])]
        bare_res = [*bare_common, "--data", resnet_data, "--arch", "resnet18"]
        bare_res += ["--batch-size", str(batches["resnet18"]), "--mean", "0.5", "--std", "0.25"]
        mnist_exp, resnet_exp = (
            "tinyexp_core.examples.mnist_exp:Exp",
            "tinyexp_core.examples.resnet_exp:Exp",
        )
        rows.append(
            compare(
                "MNIST example, 1 GPU",
                lambda: on_ray(mnist_exp, mnist, 1, gpu),
                lambda: bare(bare_mnist, 1),
                args.reps,
            )
        )
        rows.append(
            compare(
                "ResNet-18 example, 1 GPU",
                lambda: on_ray(resnet_exp, res, 1, gpu),
                lambda: bare(bare_res, 1),
                args.reps,
            )
        )
        if gpu and torch.cuda.device_count() >= 2:
            rows.append(
                compare(
                    "MNIST example, 2 GPUs (nccl DDP)",
                    lambda: on_ray(mnist_exp, mnist, 2, gpu),
                    lambda: bare(bare_mnist, 2),
                    args.reps,
                )
            )
    device = torch.cuda.get_device_name(0) if gpu else "CPU (smoke test)"
    notes = (
        f"Device: {device}; torch {torch.__version__}, CUDA {torch.version.cuda}. "
        f"Steady-state samples/s (epochs 2..{args.epochs}); TinyExp side: `RayLauncher`, "
        "`accelerator_cfg.accelerator=ddp`, `accelerator_cfg.mixed_precision=true` (bf16); "
        "bare side: `bench/bare_loop.py` with bf16 autocast on the same GPU. Batches "
        f"{batches}; {num_samples} synthetic MNIST-size samples, {images} generated 64x64 PNGs "
        "decoded to 32x32."
    )
    raw = {comp["item"]: sides for comp, sides in rows}
    bench_run.save(raw, [comp for comp, _ in rows], args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
