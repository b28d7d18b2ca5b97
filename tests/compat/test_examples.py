"""TinyExp 0.0.1's `mnist_exp` and `resnet_exp`, import lines rewritten, run on small local data.

torchvision cannot download offline, so the tests write the files it reads: MNIST IDX
files under `<root>/MNIST/raw/`, and an ImageFolder tree `<root>/{train,val}/<class>/`.
The examples hard-code their epoch counts (MNIST 3, ResNet-50 90), so the data is tiny.
"""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.compat.conftest import PortedRelease, compat_env
from tinyexp_core.data import write_idx_images, write_idx_labels

_FAST_LOADERS = [
    "dataloader_cfg.train_data_worker_per_gpu=0",
    "dataloader_cfg.val_data_worker_per_gpu=0",
]


def _write_mnist(root: Path, num_train: int = 64, num_test: int = 32) -> Path:
    """Random MNIST-format IDX files where torchvision's MNIST(root) looks for them."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        labels = torch.randint(0, 10, (n,), generator=gen)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def _write_image_folder(root: Path) -> Path:
    """One 32x32 PNG per split: ResNet-50 at 224 px is the cost, so one image per step."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        folder = root / split / "class_a"
        folder.mkdir(parents=True)
        pixels = torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / "0.png")
    return root


def _run_example(
    script: Path, cwd: Path, *overrides: str, timeout_s: float = 300, small_resnet: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python SCRIPT OVERRIDES...`; with `small_resnet`, through tests/compat/small_resnet.py
    (the script's own code with a small network in place of ResNet-50)."""
    runner = ["-m", "tests.compat.small_resnet"] if small_resnet else []
    return subprocess.run(
        [sys.executable, *runner, str(script), *overrides],
        cwd=cwd,
        env=compat_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_mnist_example_trains_from_the_command_line(
    tinyexp_001: PortedRelease, tmp_path: Path
) -> None:
    data = _write_mnist(tmp_path / "data")
    script = tinyexp_001.examples / "mnist_exp.py"
    proc = _run_example(script, tmp_path, f"dataloader_cfg.data_root={data}", *_FAST_LOADERS)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    log = (tmp_path / "output" / "Exp" / "log.txt").read_text()
    # its config block is OmegaConf.structured(self) minus the `hydra` key it deletes
    assert "-------- Configurations --------" in log
    assert "train_batch_size_per_device: 32" in log
    assert "hydra" not in log
    assert log.count("eval_metric=") == 3  # the example's 3 hard-coded epochs
    assert "device cpu is used!" in proc.stdout


def test_mnist_example_under_ray_shows_rank0_output(
    tinyexp_001: PortedRelease,
    tmp_path: Path,
    ray_cluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tinyexp_core.cli import main

    data = _write_mnist(tmp_path / "data")
    # importable by name, so the Ray worker (which gets the driver's sys.path) finds it too
    monkeypatch.syspath_prepend(str(tinyexp_001.examples))
    monkeypatch.delitem(sys.modules, "mnist_exp", raising=False)
    module = importlib.import_module("mnist_exp")
    try:
        status = main(
            [
                "launcher=ray",
                "num_workers=1",
                f"output_root={tmp_path / 'output'}",
                f"dataloader_cfg.data_root={data}",
                *_FAST_LOADERS,
            ],
            module.Exp,
        )
    finally:
        sys.modules.pop("mnist_exp", None)
    terminal = capsys.readouterr()
    assert status == 0, terminal.err[-4000:]
    # rank 0's print (accelerator.print) and its loguru lines reach this terminal
    assert "device cpu is used!" in terminal.err
    assert terminal.err.count("eval_metric=") == 3
    assert "-------- Configurations --------" in terminal.err


# The example's hard-coded 90 epochs, one image per step. `long` (`make test-nightly`):
# ResNet-50 at 224 px, about 250 s of CPU time (6-10 min on a loaded 2-CPU machine).
# `short` (`make test-e2e`): the same script, loaders, Redis cache, 90 epochs and
# assertions, with a small network built in ResNet-50's place (tests/compat/small_resnet.py).
@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize(
    "small_resnet",
    [
        pytest.param(True, id="short"),
        pytest.param(False, id="long", marks=pytest.mark.nightly),
    ],
)
def test_resnet_example_trains_with_its_redis_cache(
    tinyexp_001: PortedRelease, tmp_path: Path, small_resnet: bool
) -> None:
    data = _write_image_folder(tmp_path / "imagenet")
    ports = _free_ports(2)
    proc = _run_example(
        tinyexp_001.examples / "resnet_exp.py",
        tmp_path,
        f"dataloader_cfg.data_root={data}",
        "dataloader_cfg.train_batch_size_per_device=1",
        "dataloader_cfg.val_batch_size_per_device=1",
        # the example keeps loader workers alive across epochs, which needs >= 1 worker
        "dataloader_cfg.train_data_worker_per_gpu=1",
        "accelerator_cfg.accelerator=cpu",
        f"redis_cache_cfg.redis_cache_shard_ports=[{ports[0]},{ports[1]}]",
        "redis_cache_cfg.redis_cache_max_memory=2",  # GB over both shards (0.0.1's unit)
        timeout_s=1400,
        small_resnet=small_resnet,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "redis shards ready" in output  # the launch started the example's cache ...
    assert "Redis connection failed" not in output  # ... and its dataset used it
    assert not any(_answers(port) for port in ports)  # ... and stopped it afterwards
    log = (tmp_path / "output" / "ResNetExp" / "log.txt").read_text()
    assert log.count("eval_metric=") == 90  # the example's hard-coded 90 epochs
