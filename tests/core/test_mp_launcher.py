"""`launcher=mp num_workers=N`: N local processes as one DDP job (gloo here), failures named
by rank, every child gone on every exit path, and torchrun's world joined, not respawned."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.core.distributed_exps import (
    FailingExp,
    FingerprintedMnistExp,
    KilledRankExp,
    state_fingerprint,
)
from tests.waiting import eventually as _wait
from tinyexp_core.checkpoint import load_checkpoint
from tinyexp_core.config.exceptions import (
    ConfigValueError,
    InsufficientResourcesError,
    WorkerFailedError,
)
from tinyexp_core.config.factory import build_exp
from tinyexp_core.data import load_source, prepare_dataset
from tinyexp_core.launchers import launch_local
from tinyexp_core.launchers.mp import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _eventually(predicate, timeout_s: float = 15.0) -> bool:
    return _wait(predicate, timeout_s)


@pytest.fixture(scope="module")
def tiny_prepared(tmp_path_factory) -> str:
    """256 synthetic 28 x 28 images: enough for a DDP epoch of a few steps per rank."""
    raw = load_source("synthetic", seed=0, num_samples=256)
    return prepare_dataset(raw, tmp_path_factory.mktemp("synthetic")).path


def test_two_local_processes_end_with_identical_weights(tiny_prepared, tmp_path):
    exp = build_exp(
        FingerprintedMnistExp,
        [
            "launcher=mp",
            "num_workers=2",
            f"output_root={tmp_path}",
            f"data_cfg.prepared_path={tiny_prepared}",
            "train_cfg.num_epochs=1",
            "accelerator_cfg.accelerator=cpu",
        ],
    )
    r0, r1 = launch_local(exp)
    assert [r0["rank"], r1["rank"]] == [0, 1]
    assert r0["world_size"] == r1["world_size"] == 2
    # One run: both ranks got the same run id and directory from the parent.
    assert r0["run_id"] == r1["run_id"] and r0["run_dir"] == r1["run_dir"]
    # DDP kept the replicas in lockstep: bit-identical weights on both ranks...
    assert r0["model_sha256"] == r1["model_sha256"]
    # ...and rank 0 saved exactly those weights.
    last = r0["checkpoints"]["last"]
    assert state_fingerprint(load_checkpoint(last)["model"]) == r0["model_sha256"]
    assert not multiprocessing.active_children()


def test_a_failing_rank_is_named_and_every_child_stopped():
    started = time.perf_counter()
    with pytest.raises(WorkerFailedError) as info:
        launch_local(build_exp(FailingExp, ["num_workers=2"]))
    # Rank 0 sleeps 120 s: the launcher must stop it once rank 1 has failed.
    assert time.perf_counter() - started < 60
    assert info.value.rank == 1
    assert "ValueError: boom on purpose in rank 1" in info.value.cause
    assert isinstance(info.value.__cause__, ValueError)
    assert not multiprocessing.active_children()


def test_a_killed_rank_is_named_with_its_signal():
    with pytest.raises(WorkerFailedError) as info:
        launch_local(build_exp(KilledRankExp, ["num_workers=2"]))
    assert info.value.rank == 1
    assert info.value.cause == "worker process died (killed by SIGKILL)"
    assert not multiprocessing.active_children()


def test_under_torchrun_num_workers_must_match_the_world(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigValueError) as info:
        launch_local(build_exp(FailingExp, ["num_workers=3"]))
    assert info.value.key == "num_workers" and info.value.value == 3
    assert "2, the WORLD_SIZE of the torchrun world" in str(info.value)


def test_torchrun_world_is_joined_not_respawned():
    """Two processes started by torchrun run one pi estimate together (no more spawned)."""
    port = free_port()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "-m",
            "tinyexp_core.examples.pi_exp",
            "launcher=mp",
            "num_workers=2",
            "num_samples=20000",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, proc.stdout  # printed by rank 0 only
    assert '"world_size": 2' in summaries[0] and '"num_samples": 40000' in summaries[0]


_INTERRUPTED = """
from tests.core.distributed_exps import SleepingExp
from tinyexp_core.cli import main
import sys
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], SleepingExp))
"""


def test_ctrl_c_stops_every_rank_and_rank0_lines_reach_the_terminal(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, str(script), "launcher=mp", "num_workers=2", f"pid_dir={pid_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        assert _eventually(lambda: len(list(pid_dir.glob("*.pid"))) == 2, timeout_s=120)
        pids = [int(p.read_text()) for p in sorted(pid_dir.glob("*.pid"))]
        proc.send_signal(signal.SIGINT)  # the parent only, as a supervisor would
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert _eventually(lambda: not any(_pid_alive(p) for p in pids)), pids
    assert "rank0 | rank 0 of 2 sleeping" in stderr, stderr
    assert "rank 1 of 2 sleeping" not in stderr, "other ranks log WARNING and above only"


def test_nccl_ranks_beyond_the_gpus_of_this_host_are_refused(monkeypatch):
    """On a 1-GPU host, 2 local DDP ranks would share a device, which nccl refuses:
    said before any process starts."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    exp = build_exp("tinyexp_core.examples.mnist_exp:Exp", ["num_workers=2"])
    with pytest.raises(InsufficientResourcesError) as info:
        launch_local(exp)
    assert "needs 2 GPU but this host has 1" in str(info.value)
    assert "accelerator_cfg.accelerator=cpu" in str(info.value)
    assert not multiprocessing.active_children()
