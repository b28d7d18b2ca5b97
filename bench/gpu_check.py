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

Steady state = every epoch but the first; runs alternate; ratios are medians of per-pair
ratios. `--device cpu` runs the same code paths on the CPU with tiny sizes (a smoke test that
writes no docs).

    .venv/bin/python -m bench.gpu_check [--reps 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bare_loop import parse_result
from bench.common import markdown_table, prepare_data, python, run, write_section

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
    from tinyexp_core.redis_server import free_port

    cmd = [python(), "-m", "bench.bare_loop", *args]
    if workers > 1:
        launcher = [python(), "-m", "torch.distributed.run", f"--nproc-per-node={workers}"]
        launcher += ["--master-addr=127.0.0.1", f"--master-port={free_port()}", "-m"]
        cmd = [*launcher, "bench.bare_loop", *args]
    return parse_result(run(cmd))["samples_per_s"]


def compare(name: str, ray_side: Any, bare_side: Any, reps: int) -> list[object]:
    sides: dict[str, list[float]] = {"tinyexp": [], "bare": []}
    for rep in range(reps):
        for side in ("tinyexp", "bare") if rep % 2 == 0 else ("bare", "tinyexp"):
            rates = ray_side() if side == "tinyexp" else bare_side()
            sides[side].append(statistics.mean(rates[1:]))
            print(f"{name} rep {rep} {side}: {[round(r) for r in rates]} samples/s", flush=True)
    ratio = statistics.median(t / b for t, b in zip(sides["tinyexp"], sides["bare"], strict=True))
    return [
        name,
        f"{statistics.median(sides['tinyexp']):,.0f}",
        f"{statistics.median(sides['bare']):,.0f}",
        f"**{ratio:.4f}**",
        "met" if ratio >= TARGET else "missed",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
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
    started = time.perf_counter()
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
    body = (
        markdown_table(["run", "TinyExp samples/s", "bare samples/s", "ratio", "vs 0.97"], rows)
        + f"\n\nDevice: {device}; torch {torch.__version__}, CUDA {torch.version.cuda}. "
        f"Steady-state samples/s (epochs 2..{args.epochs}); TinyExp side: `RayLauncher`, "
        "`accelerator_cfg.accelerator=ddp`, `accelerator_cfg.mixed_precision=true` (bf16); "
        "bare side: `bench/bare_loop.py` with bf16 autocast on the same GPU. Batches "
        f"{batches}; {num_samples} synthetic MNIST-size samples, {images} generated 64x64 PNGs "
        f"decoded to 32x32. Wall time: {time.perf_counter() - started:.0f} s."
    )
    if gpu:
        write_section("gpu", "8. GPU", body, "bash bench/gpu_check.sh")
    else:
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
