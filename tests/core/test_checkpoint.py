"""Checkpoint schema, atomic save, verified load, restore and retention."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from loguru import logger

from tinyexp_core import checkpoint as ckpt
from tinyexp_core.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointCfg,
    CheckpointManager,
    build_checkpoint,
    load_checkpoint,
    restore,
    save_checkpoint,
    sha256_file,
    verify_checkpoint,
)
from tinyexp_core.config.exceptions import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ConfigValueError,
    InvalidCheckpointTypeError,
    UnsupportedCheckpointFormatError,
)


class TinyNet(torch.nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, hidden)
        self.bn = torch.nn.BatchNorm1d(hidden)
        self.fc2 = torch.nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _trained(steps: int = 3) -> tuple[TinyNet, torch.optim.Adam, torch.optim.lr_scheduler.StepLR]:
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(steps):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt, sched


def _state(epoch: int = 2, step: int = 30, **kwargs) -> dict:
    model, opt, sched = _trained()
    return build_checkpoint(
        model=model, optimizer=opt, scheduler=sched, epoch=epoch, step=step, **kwargs
    )


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- schema and round trip


def test_build_checkpoint_schema_is_plain_and_weights_only_loadable(tmp_path: Path) -> None:
    state = _state(config={"lr": 0.01, "root": tmp_path, "sizes": (1, 2)}, metrics={"acc": 0.5})
    assert state["format"] == CHECKPOINT_FORMAT
    expected_keys = {"format", "model", "optimizer", "scheduler", "epoch", "step", "rng"}
    expected_keys |= {"config", "metrics", "exp_class", "saved_at", "torch_version", "extra"}
    assert set(state) == expected_keys
    assert state["config"] == {"lr": 0.01, "root": str(tmp_path), "sizes": [1, 2]}
    assert state["metrics"] == {"acc": 0.5}
    assert type(state["torch_version"]) is str
    assert state["saved_at"].endswith("+00:00")
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert state["rng"]["cuda"] == [] or torch.cuda.is_available()

    path = tmp_path / "c.pt"
    save_checkpoint(state, path)
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 2 and raw["step"] == 30


def test_round_trip_restores_model_optimizer_scheduler(tmp_path: Path) -> None:
    model, opt, sched = _trained()
    state = build_checkpoint(
        model=model, optimizer=opt, scheduler=sched, epoch=4, step=123, exp_class="x.Exp"
    )
    path = tmp_path / "ckpt.pt"
    sha = save_checkpoint(state, path)
    assert sha == sha256_file(path) == verify_checkpoint(path)

    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 4 and loaded["step"] == 123 and loaded["exp_class"] == "x.Exp"

    torch.manual_seed(1)
    model2 = TinyNet()
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    restore(loaded, model=model2, optimizer=opt2, scheduler=sched2, path=str(path))

    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, model2.state_dict()[key]), key
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    for index, saved in opt.state_dict()["state"].items():
        for name, value in saved.items():
            assert torch.equal(value, opt2.state_dict()["state"][index][name])
    assert sched2.state_dict() == sched.state_dict()
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_restore_rng_replays_random_stream(tmp_path: Path) -> None:
    torch.manual_seed(7)
    state = _state()
    expected = torch.rand(5)
    torch.manual_seed(99)
    restore(state, model=TinyNet(), restore_rng=True)
    assert torch.equal(torch.rand(5), expected)


def test_ddp_wrapped_model_is_unwrapped(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(TinyNet())
        state = build_checkpoint(model=model, epoch=0, step=1)
        assert all(not key.startswith("module.") for key in state["model"])
        target = torch.nn.parallel.DistributedDataParallel(TinyNet())
        restore(state, model=target)
        for key, tensor in model.module.state_dict().items():
            assert torch.equal(tensor, target.module.state_dict()[key])
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- mismatch


def test_restore_into_other_shape_names_tensor_and_shapes() -> None:
    state = build_checkpoint(model=TinyNet(hidden=8), epoch=0, step=0)
    with pytest.raises(CheckpointMismatchError) as info:
        restore(state, model=TinyNet(hidden=16), path="run/last.pt")
    message = str(info.value)
    assert "fc1.weight" in message
    assert "(8, 4)" in message and "(16, 4)" in message
    assert "run/last.pt" in message


def test_restore_into_other_architecture_names_missing_key() -> None:
    state = build_checkpoint(model=torch.nn.Linear(4, 3), epoch=0, step=0)
    with pytest.raises(CheckpointMismatchError, match="missing tensor 'fc1.weight'"):
        restore(state, model=TinyNet())


def test_restore_optimizer_absent_from_checkpoint_is_mismatch() -> None:
    model = TinyNet()
    state = build_checkpoint(model=model, epoch=0, step=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointMismatchError, match="no optimizer state"):
        restore(state, model=model, optimizer=opt)


# ---------------------------------------------------------------- corruption and atomicity


def test_flipped_byte_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(_state(), path)
    _flip_byte(path)
    with pytest.raises(CheckpointCorruptError, match="sha256: expected"):
        verify_checkpoint(path)
    with pytest.raises(CheckpointCorruptError):
        load_checkpoint(path)


@pytest.mark.parametrize("rehash", [True, False], ids=["rehashed", "kernel-copy"])
def test_a_copy_verifies_and_a_bad_copy_is_caught(tmp_path: Path, rehash: bool) -> None:
    src, dst = tmp_path / "last.pt", tmp_path / "epoch_0002.pt"
    sha = save_checkpoint(_state(), src)
    ckpt.copy_checkpoint(src, dst, sha, rehash=rehash)
    assert verify_checkpoint(dst) == sha and dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [src.name, f"{src.name}.sha256", dst.name, f"{dst.name}.sha256"]
    )  # no temp file left
    # A copy whose bytes are not the ones hashed: refused at once when re-hashed, else
    # when loaded (the sidecar holds the sha256 the writer recorded).
    wrong, other = "0" * 64, tmp_path / "best.pt"
    if rehash:
        with pytest.raises(CheckpointCorruptError, match="has sha256"):
            ckpt.copy_checkpoint(src, other, wrong, rehash=True)
        assert not Path(f"{other}.sha256").exists()
    else:
        ckpt.copy_checkpoint(src, other, wrong, rehash=False)
    with pytest.raises(CheckpointCorruptError):
        load_checkpoint(other)


def test_truncated_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(_state(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointCorruptError, match="size: expected"):
        verify_checkpoint(path)
    with pytest.raises(CheckpointCorruptError):
        load_checkpoint(path)


def test_unverified_load_of_damaged_file_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(_state(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointCorruptError, match="torch.load failed"):
        load_checkpoint(path, verify=False)


def test_missing_sidecar_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(_state(), path)
    Path(f"{path}.sha256").unlink()
    with pytest.raises(CheckpointCorruptError, match="sidecar"):
        verify_checkpoint(path)
    assert load_checkpoint(path, verify=False)["epoch"] == 2


def test_sidecar_content(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    sha = save_checkpoint(_state(), path)
    meta = json.loads(Path(f"{path}.sha256").read_text())
    assert meta["sha256"] == sha
    assert meta["size"] == path.stat().st_size
    assert "saved_at" in meta


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        verify_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointNotFoundError):
        load_checkpoint(tmp_path / "nope.pt", verify=False)


def test_non_dict_and_foreign_dicts_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2], path)
    with pytest.raises(InvalidCheckpointTypeError):
        load_checkpoint(path, verify=False)
    torch.save({"model_state_dict": {}}, path)
    with pytest.raises(UnsupportedCheckpointFormatError, match="format"):
        load_checkpoint(path, verify=False)
    with pytest.raises(UnsupportedCheckpointFormatError):
        save_checkpoint({"model": {}}, tmp_path / "x.pt")


def test_unsafe_pickle_is_corrupt_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    state = _state()
    state["extra"] = {"obj": Path("/tmp")}  # a custom class: refused by weights_only
    save_checkpoint(state, path)
    with pytest.raises(CheckpointCorruptError, match="UnpicklingError"):
        load_checkpoint(path)


def _crash_after_data_replace(monkeypatch: pytest.MonkeyPatch, target: Path) -> list[str]:
    real_replace = os.replace
    sources: list[str] = []

    def replace(src, dst):
        sources.append(os.fspath(src))
        real_replace(src, dst)
        if os.fspath(dst) == os.fspath(target):
            raise KeyboardInterrupt("simulated crash after data replace")

    monkeypatch.setattr(os, "replace", replace)
    return sources


def test_crash_before_first_sidecar_leaves_unverifiable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.pt"
    sources = _crash_after_data_replace(monkeypatch, path)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(), path)
    monkeypatch.undo()
    assert path.exists()
    with pytest.raises(CheckpointCorruptError, match="missing"):
        verify_checkpoint(path)
    assert sources and not any(src.endswith(".pt") for src in sources)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_crash_before_sidecar_rewrite_leaves_stale_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(_state(epoch=1), path)
    _crash_after_data_replace(monkeypatch, path)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(epoch=2), path)
    monkeypatch.undo()
    with pytest.raises(CheckpointCorruptError):
        verify_checkpoint(path)


def test_temp_names_never_end_with_pt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace
    sources: list[str] = []

    def replace(src, dst):
        sources.append(os.fspath(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    CheckpointManager(tmp_path, keep_last_n=1).save(_state(epoch=0), is_best=True)
    assert len(sources) == 6  # last, epoch and best, each with its sidecar
    assert all(not src.endswith(".pt") for src in sources)
    assert all(Path(src).name.startswith(".") for src in sources)


# ---------------------------------------------------------------- manager


@pytest.fixture
def warnings_log():
    messages: list[str] = []
    handler = logger.add(messages.append, level="WARNING", format="{message}")
    yield messages
    logger.remove(handler)


def test_retention_keeps_exactly_keep_last_n(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "ckpts", keep_last_n=2)
    state = _state()
    for epoch in range(5):
        state["epoch"] = epoch
        written = manager.save(state, is_best=epoch == 1)
        assert written["epoch"].endswith(f"epoch_{epoch:04d}.pt")
        assert ("best" in written) == (epoch == 1)
    names = sorted(p.name for p in (tmp_path / "ckpts").iterdir())
    assert names == [
        "best.pt",
        "best.pt.sha256",
        "epoch_0003.pt",
        "epoch_0003.pt.sha256",
        "epoch_0004.pt",
        "epoch_0004.pt.sha256",
        "last.pt",
        "last.pt.sha256",
    ]
    assert load_checkpoint(manager.best_path)["epoch"] == 1
    assert load_checkpoint(manager.last_path)["epoch"] == 4
    path, loaded = manager.latest_valid()
    assert path == manager.last_path and loaded["epoch"] == 4


def test_latest_valid_falls_back_with_warning(tmp_path: Path, warnings_log: list[str]) -> None:
    manager = CheckpointManager(tmp_path, keep_last_n=2)
    state = _state()
    for epoch in range(3):
        state["epoch"] = epoch
        manager.save(state, is_best=False)
    _flip_byte(Path(manager.last_path))
    _flip_byte(tmp_path / "epoch_0002.pt")

    path, loaded = manager.latest_valid()
    assert path == str(tmp_path / "epoch_0001.pt")
    assert loaded["epoch"] == 1
    assert len(warnings_log) == 2
    first, second = warnings_log
    assert "last.pt" in first and "epoch_0002.pt" in first and "sha256" in first
    assert "epoch_0002.pt" in second and "epoch_0001.pt" in second


def test_latest_valid_takes_a_step_file_saved_after_an_older_last_pt(tmp_path: Path) -> None:
    """A bucket's last.pt is uploaded after its peers: a node that resumes between the two
    uploads mirrors the new step file beside the previous last.pt, and resumes from the
    step file (its sidecar's saved_at is newer and its bytes differ), not one step back."""
    import shutil

    manager = CheckpointManager(tmp_path / "run")
    manager.save(_state(epoch=0, step=20), is_best=False)
    stale = tmp_path / "stale"
    stale.mkdir()
    for name in ("last.pt", "last.pt.sha256"):  # last.pt as the bucket still had it
        shutil.copy(tmp_path / "run" / name, stale / name)
    step = _state(epoch=1, step=24)
    newest = manager.save_step(step)
    for name in ("last.pt", "last.pt.sha256"):
        shutil.copy(stale / name, tmp_path / "run" / name)
    path, loaded = manager.latest_valid()
    assert path == newest and loaded["step"] == 24
    # Where last.pt is current (always, on a local root), it is the file resumed from.
    manager.save_step({**step, "step": 28})
    path, loaded = manager.latest_valid()
    assert path == manager.last_path and loaded["step"] == 28


def test_latest_valid_all_invalid_raises(tmp_path: Path, warnings_log: list[str]) -> None:
    manager = CheckpointManager(tmp_path, keep_last_n=1)
    manager.save(_state(epoch=0), is_best=True)
    _flip_byte(Path(manager.last_path))
    Path(f"{tmp_path / 'epoch_0000.pt'}.sha256").unlink()
    with pytest.raises(CheckpointCorruptError) as info:
        manager.latest_valid()
    assert "last.pt" in str(info.value) and "epoch_0000.pt" in str(info.value)
    assert "nothing" in warnings_log[-1]


def test_latest_valid_empty_or_missing_dir_is_none(tmp_path: Path) -> None:
    assert CheckpointManager(tmp_path).latest_valid() is None
    assert CheckpointManager(tmp_path / "absent").latest_valid() is None
    assert CheckpointManager(tmp_path).best_valid() is None


def test_best_valid_raises_when_corrupt(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save(_state(epoch=0), is_best=True)
    path, loaded = manager.best_valid()
    assert path == manager.best_path and loaded["epoch"] == 0
    _flip_byte(Path(manager.best_path))
    with pytest.raises(CheckpointCorruptError):
        manager.best_valid()


def test_manager_rejects_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigValueError, match="keep_last_n"):
        CheckpointManager(tmp_path, keep_last_n=0)
    with pytest.raises(ConfigValueError, match="last_ckpt_name"):
        CheckpointManager(tmp_path, last_ckpt_name="epoch_0001.pt")
    with pytest.raises(UnsupportedCheckpointFormatError, match="epoch"):
        CheckpointManager(tmp_path).save({"format": CHECKPOINT_FORMAT, "model": {}}, is_best=False)


def test_checkpoint_cfg_builds_manager(tmp_path: Path) -> None:
    cfg = CheckpointCfg(keep_last_n=3)
    manager = cfg.build_manager(str(tmp_path))
    assert manager.directory == tmp_path / "checkpoints"
    assert manager.keep_last_n == 3
    assert manager.last_path.endswith("last.pt") and manager.best_path.endswith("best.pt")
    with pytest.raises(ConfigValueError, match="keep_last_n"):
        CheckpointCfg(keep_last_n=0).validate()
    with pytest.raises(ConfigValueError, match="keep_last_n"):
        CheckpointCfg(keep_last_n=0).build_manager(str(tmp_path))
