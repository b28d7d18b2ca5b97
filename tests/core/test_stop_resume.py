"""Checkpoint-then-stop from the command line, and a mid-epoch resume that matches.

SIGTERM reaches the CLI once a step of the second epoch (index 1) has run; the run must
be gone within the bound, leave a verified step-level checkpoint inside that epoch, and
`resume_from=auto` must end with exactly (torch.equal) the weights of an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from tinyexp_core import checkpoint as ckpt
from tinyexp_core.data import load_source, prepare_dataset
from tinyexp_core.training.stop import STOP_GRACE_S

MODULE = "tinyexp_core.examples.mnist_exp"
STEP_LINE = re.compile(r"epoch (\d+) step (\d+) loss")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    """160 synthetic images: 120 train samples, 30 steps of 4 per epoch on one rank."""
    raw = load_source("synthetic", seed=0, num_samples=160)
    out = tmp_path_factory.mktemp("stop-data")
    return prepare_dataset(raw, out, val_fraction=0.1, test_fraction=0.1).path


def _args(root: Path, prepared: str, run_id: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        MODULE,
        f"output_root={root}",
        f"data_cfg.prepared_path={prepared}",
        f"run_id={run_id}",
        "data_cfg.batch_size=4",
        "train_cfg.num_epochs=2",
        "progress_cfg.throttle_s=0",
        "logger_cfg.level=DEBUG",  # the per-step line the test waits for
        "accelerator_cfg.accelerator=cpu",
        "num_cpus_per_worker=1",
        "seed=3",
        *extra,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _stop_in_second_epoch(args: list[str]) -> tuple[subprocess.Popen, float, str]:
    """Start the CLI, SIGTERM it after a step of epoch 1; (process, seconds to exit, log)."""
    proc = subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env()
    )
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            match = STEP_LINE.search(line)
            if match and int(match.group(1)) == 1:
                break
        else:
            pytest.fail("the run ended before its second epoch:\n" + "".join(lines[-40:]))
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        lines.extend(proc.stderr)  # until the process closes it
        proc.wait(timeout=STOP_GRACE_S + 30)
        return proc, time.monotonic() - sent, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint(path)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"tensors differ after resume: {different}"


@pytest.mark.parametrize("num_workers", [1, 2], ids=["one-process", "mp-two-ranks"])
def test_sigterm_mid_epoch_checkpoints_and_resume_matches(
    num_workers, prepared, tmp_path, redis_url
):
    from tinyexp_core.progress import read_progress
    from tinyexp_core.services.redis_client import make_client

    workers = [f"num_workers={num_workers}", "launcher=mp"]
    full = tmp_path / "full"
    _run(_args(full, prepared, "full", *workers))

    run_id = f"stop-{uuid.uuid4().hex[:8]}"
    root = tmp_path / "stopped"
    # A short pause per step keeps 16-32 steps per epoch from ending before the signal lands.
    slow = [*workers, "train_cfg.step_delay_s=0.05", f"progress_cfg.url={redis_url}"]
    proc, took, log = _stop_in_second_epoch(_args(root, prepared, run_id, *slow))
    assert proc.returncode == 3, log[-3000:]
    assert "stopped: run stopped at step" in log
    print(f"\n{num_workers} rank(s): gone {took:.2f} s after SIGTERM")
    # The bound is 15 s plus one step; one step here is well under 5 s even on a busy box.
    assert took <= STOP_GRACE_S + 5, log[-3000:]

    last = root / run_id / "checkpoints" / "last.pt"
    ckpt.verify_checkpoint(last)
    state = ckpt.load_checkpoint(last)
    position = state["position"]
    assert position["epoch"] == 1
    assert 0 < position["step_in_epoch"] < position["num_steps"], position
    assert position["world_size"] == num_workers and len(state["rng_ranks"]) == num_workers
    assert state["step"] == position["num_steps"] + position["step_in_epoch"]

    client = make_client(redis_url)
    try:
        progress = read_progress(client, run_id)
    finally:
        client.close()
    assert progress.status == "cancelled", progress
    assert progress.last_checkpoint.endswith(f"step_{state['step']:09d}.pt")

    resumed = _run(_args(root, prepared, run_id, *workers, "resume_from=auto"))
    assert f'"resumed_from": "{last}"' in resumed.stdout
    _assert_same_weights(
        root / run_id / "checkpoints" / "last.pt", full / "full" / "checkpoints" / "last.pt"
    )
    # The interrupted epoch's train loss too: every rank resumed with its own loss sums.
    assert _train_losses(root / run_id) == _train_losses(full / "full")


def _train_losses(run_dir: Path) -> list[float]:
    history = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["extra"]["history"]
    return [row["train_loss"] for row in history]


def test_ray_launcher_passes_a_stop_request_to_its_ranks(ray_cluster, prepared, tmp_path):
    """The driver's stop request (what a SIGTERM to the CLI or Dagster's termination makes)
    reaches the rank actors through `request_stop`; they checkpoint mid-epoch and end."""
    from tinyexp_core.config.exceptions import RunStoppedError
    from tinyexp_core.config.factory import build_exp
    from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec
    from tinyexp_core.training.stop import clear_stop, request_stop

    def run(run_id: str, *extra: str, on_line=None):
        args = _args(tmp_path, prepared, run_id, "launcher=ray", "num_workers=2", *extra)[3:]
        exp = build_exp(MODULE + ":Exp", args)
        spec = RayLaunchSpec(num_workers=2, num_cpus_per_worker=1)
        return RayLauncher(spec, log_callback=on_line).run(exp)

    run("ray-full")
    asked: list[float] = []

    def on_line(line: str) -> None:
        match = STEP_LINE.search(line)
        if match and int(match.group(1)) == 1 and not asked:
            asked.append(time.monotonic())
            request_stop("test: stop the Ray run")

    try:
        with pytest.raises(RunStoppedError) as stopped:
            run("ray-stop", "train_cfg.step_delay_s=0.2", on_line=on_line)
        took = time.monotonic() - asked[0]
    finally:
        clear_stop()
    print(f"\nRay, 2 ranks: run over {took:.2f} s after the stop request")
    assert took <= STOP_GRACE_S + 5
    last = tmp_path / "ray-stop" / "checkpoints" / "last.pt"
    assert stopped.value.checkpoint.endswith(".pt") and stopped.value.step > 0
    position = ckpt.load_checkpoint(last)["position"]
    assert position["epoch"] == 1 and 0 < position["step_in_epoch"] < position["num_steps"]

    run("ray-stop", "resume_from=auto")
    _assert_same_weights(last, tmp_path / "ray-full" / "checkpoints" / "last.pt")
