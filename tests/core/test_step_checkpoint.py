"""Step-level checkpoints: signals deferred during writes, background writes, retention,
periodic checkpoints in a real run and a bit-identical resume from one of them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tinyexp_core import checkpoint as ckpt
from tinyexp_core.config.exceptions import CheckpointMismatchError, ConfigValueError
from tinyexp_core.data import TensorBatchLoader, load_source, prepare_dataset
from tinyexp_core.training.step_checkpoint import (
    DataPosition,
    StepCheckpointWriter,
    resume_position,
    rng_state,
)
from tinyexp_core.training.stop import StopAgreement, clear_stop, stop_on_signals, stop_requested

EXP = "tinyexp_core.examples.mnist_exp:Exp"


def _state(step: int, size: int = 1000) -> dict:
    model = torch.nn.Linear(size, size)
    torch.nn.init.constant_(model.weight, float(step))
    return ckpt.build_checkpoint(model=model, epoch=0, step=step, position={"epoch": 0})


@pytest.fixture(autouse=True)
def _no_stop_left():
    clear_stop()
    yield
    clear_stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_checkpoint_write_is_deferred_and_last_stays_valid(
    sig, tmp_path, monkeypatch
):
    manager = ckpt.CheckpointManager(tmp_path)
    manager.save_step(_state(1))
    real_save = torch.save
    delivered = []

    def save_and_get_signalled(obj, f):
        # Half of the bytes are out when the signal comes: the handler runs right here,
        # between two bytecodes of the write, which must carry on regardless.
        f.write(b"\0" * 1024)
        f.seek(0)
        os.kill(os.getpid(), sig)
        delivered.append(stop_requested())
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", save_and_get_signalled)
    with stop_on_signals():
        path = manager.save_step(_state(2))
    assert delivered == [True], "the signal must arrive mid-write, and only set the flag"
    assert stop_requested()
    for written in (manager.last_path, path):
        ckpt.verify_checkpoint(written)
        state = ckpt.load_checkpoint(written)
        assert state["step"] == 2 and torch.all(state["model"]["weight"] == 2.0)


def test_background_writer_snapshots_on_the_step(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path, keep_last_n=2)
    model = torch.nn.Linear(300, 300)
    saved = []
    with StepCheckpointWriter(manager, on_saved=lambda p, s: saved.append(p)) as writer:
        for step in range(1, 5):
            with torch.no_grad():
                model.weight.fill_(float(step))
            writer.submit(ckpt.build_checkpoint(model=model, epoch=0, step=step))
            with torch.no_grad():
                model.weight.fill_(-1.0)  # the write in flight must not see this
    names = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert names == ["step_000000003.pt", "step_000000004.pt"]  # keep_last_n per kind
    assert len(saved) == 4
    for name, step in (("step_000000003.pt", 3), ("step_000000004.pt", 4)):
        assert torch.all(ckpt.load_checkpoint(tmp_path / name)["model"]["weight"] == step)
    assert ckpt.load_checkpoint(manager.last_path)["step"] == 4


def test_latest_valid_falls_back_to_the_newest_step_file(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path, keep_last_n=3)
    for step in (5, 10):
        manager.save_step(_state(step, size=4))
    Path(manager.last_path).write_bytes(b"torn")
    path, state = manager.latest_valid()
    assert path.endswith("step_000000010.pt") and state["step"] == 10


def test_loader_start_step_yields_the_rest_of_the_same_order():
    x = torch.randint(0, 255, (50, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(50)
    loader = TensorBatchLoader(x, y, 4, seed=7, rank=1, world_size=2)
    loader.set_epoch(3)
    full = [b[1] for b in loader]
    loader.set_epoch(3, start_step=4)
    rest = [b[1] for b in loader]
    assert len(rest) == len(full) - 4
    assert all(torch.equal(a, b) for a, b in zip(full[4:], rest, strict=True))
    with pytest.raises(ConfigValueError, match="start_step"):
        loader.set_epoch(3, start_step=len(loader) + 1)


def test_resume_position_restores_rng_and_checks_the_world():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    saved = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    state = {
        "epoch": 2,
        "position": DataPosition(2, 5, 1.5, 20).to_dict(num_steps=9, world_size=2, sampler_seed=0),
        "rng_ranks": [rng_state(), saved],
    }
    position = resume_position(state, rank=1, world_size=2, num_steps=9)
    assert (position.epoch, position.step_in_epoch, position.seen) == (2, 5, 20)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    with pytest.raises(CheckpointMismatchError, match="world_size=2"):
        resume_position(state, rank=0, world_size=1, num_steps=9)
    assert resume_position({"epoch": 2}, rank=0, world_size=1, num_steps=9).epoch == 3


def test_each_rank_resumes_with_its_own_loss_sums():
    ranks = [DataPosition(1, 4, 2.5, 64), DataPosition(1, 4, 3.25, 60)]
    entry = ranks[0].to_dict(num_steps=9, world_size=2, sampler_seed=0, ranks=ranks)
    state = {"epoch": 1, "position": entry, "rng_ranks": [rng_state(), rng_state()]}
    for rank, mine in enumerate(ranks):
        assert resume_position(state, rank=rank, world_size=2, num_steps=9) == mine
    # A checkpoint written before `ranks` existed holds rank 0's sums only.
    del entry["ranks"]
    assert resume_position(state, rank=1, world_size=2, num_steps=9) == ranks[0]


class _FakeAcc:
    world_size = 1


def test_stop_agreement_cadence():
    clock = [0.0]
    agreement = StopAgreement(_FakeAcc(), every_n_steps=3, every_s=10, clock=lambda: clock[0])
    assert [agreement.poll(s) for s in (1, 2, 3)] == [(False, False)] * 2 + [(False, True)]
    clock[0] = 11.0
    assert agreement.poll(4) == (False, True)  # every_s is up
    assert agreement.poll(5) == (False, False)


def test_agree_every_s_reaches_the_agreement_and_bad_values_are_refused(tmp_path):
    from tinyexp_core.training.recipe import StepCheckpoints

    cfg = ckpt.CheckpointCfg(agree_every_s=0.7)
    hooks = StepCheckpoints(
        _FakeAcc(), cfg.build_manager(tmp_path), checkpoint_cfg=cfg, num_steps=10,
        sampler_seed=0, fields=dict, reporter=None, logger=None,
    )  # fmt: skip
    assert hooks._stopper._agree_every_s == 0.7
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="agree_every_s"):
            StopAgreement(_FakeAcc(), agree_every_s=bad)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    raw = load_source("synthetic", seed=0, num_samples=160)
    out = tmp_path_factory.mktemp("periodic-data")
    return prepare_dataset(raw, out, val_fraction=0.1, test_fraction=0.1).path


def _train(root: Path, prepared: str, run_id: str, *extra: str) -> None:
    args = [
        sys.executable,
        "-m",
        "tinyexp_core.examples.mnist_exp",
        f"output_root={root}",
        f"data_cfg.prepared_path={prepared}",
        f"run_id={run_id}",
        "data_cfg.batch_size=4",
        "train_cfg.num_epochs=2",
        "accelerator_cfg.accelerator=cpu",
        "seed=5",
        *extra,
    ]
    # One thread, as a rank of launcher=mp gets: a shared CI box runs it several times faster.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_n_steps_writes_step_files_and_resume_from_one_is_bit_identical(prepared, tmp_path):
    # 30 steps per epoch, a step checkpoint every 10 global steps: 6 files in 2 epochs.
    started = time.perf_counter()
    _train(tmp_path, prepared, "periodic", "checkpoint_cfg.every_n_steps=10",
           "checkpoint_cfg.keep_last_n=10")  # fmt: skip
    directory = tmp_path / "periodic" / "checkpoints"
    steps = sorted(p.name for p in directory.glob("step_*.pt"))
    assert steps == [f"step_{s:09d}.pt" for s in (10, 20, 30, 40, 50, 60)]
    mid = ckpt.load_checkpoint(directory / "step_000000040.pt")
    num_steps = mid["position"]["num_steps"]  # 30: 120 train samples / 4
    assert mid["position"]["epoch"] == 1 and mid["position"]["step_in_epoch"] == 40 - num_steps

    _train(tmp_path, prepared, "resumed", f"resume_from={directory / 'step_000000040.pt'}")
    a = ckpt.load_checkpoint(directory / "last.pt")["model"]
    b = ckpt.load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resume from a step file must match"
    print(f"\nperiodic + resumed runs: {time.perf_counter() - started:.1f} s")


def _agreement_rank(rank: int, port: int, out: Any) -> None:
    """One of two gloo ranks polling steps 1..8: rank 1 asks for a stop after step 3."""
    import torch.distributed as dist

    from tinyexp_core.training.stop import clear_stop, request_stop

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        acc = type("Acc", (), {"world_size": 2, "device": "cpu"})()
        agreement = StopAgreement(acc, every_n_steps=2)
        decisions = []
        for step in range(1, 9):
            decision = agreement.poll(step)
            decisions.append(decision)
            if decision[0]:
                break
            if rank == 1 and step == 3:
                request_stop("test")
        agreement.close()
        clear_stop()
        out.put((rank, decisions))
    finally:
        dist.destroy_process_group()


def _paced_rank(rank: int, port: int, out: Any) -> None:
    """One of two gloo ranks with `agree_every_s=0.1` on a fake clock: rank 0's steps take
    0.01 s, rank 1's 0.03 s; rank 1 asks for a stop after step 40."""
    import torch.distributed as dist

    from tinyexp_core.training.stop import clear_stop, request_stop

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        acc = type("Acc", (), {"world_size": 2, "device": "cpu"})()
        clock = [0.0]
        agreement = StopAgreement(acc, agree_every_s=0.1, clock=lambda: clock[0])
        checks, stopped_at = [], None
        for step in range(1, 200):
            clock[0] += 0.01 if rank == 0 else 0.03
            due = agreement._next_check
            if agreement.poll(step)[0]:
                stopped_at = step
                break
            if step >= due:
                checks.append(step)
            if rank == 1 and step == 40:
                request_stop("test")
        agreement.close()
        clear_stop()
        out.put((rank, checks, stopped_at))
    finally:
        dist.destroy_process_group()


def _two_ranks(target: Any) -> dict[int, Any]:
    import multiprocessing as mp
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, port, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, *found = out.get(timeout=120)
        results[rank] = found
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_ranks_agree_on_how_often_they_check_from_their_step_times():
    """Proposals 10 (0.1 s / 0.01 s) and 3 (0.1 s / 0.03 s): the ranks check every
    (10 + 3) // 2 = 6 steps, at the same steps, and stop at the same step, at most two
    intervals after the request."""
    results = _two_ranks(_paced_rank)
    assert results[0] == results[1]
    checks, stopped_at = results[0]
    assert checks[:3] == [1, 2, 3]  # every step until the first proposals are agreed
    assert {b - a for a, b in zip(checks[2:], checks[3:], strict=False)} == {6}
    assert 40 < stopped_at <= 40 + 2 * 6


def test_stop_agreement_across_ranks_is_one_check_late_and_identical():
    """The ranks agree without waiting on the step: a stop one rank asks for after step 3
    (seen at its check of step 4) is agreed at step 5 on both; `every_n_steps` saves need no
    agreement."""
    results = {rank: decisions for rank, (decisions,) in _two_ranks(_agreement_rank).items()}
    expected = [(False, False), (False, True), (False, False), (False, True), (True, False)]
    assert results[0] == results[1] == expected
