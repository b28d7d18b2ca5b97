"""Per-rank loguru setup, logger / wandb config blocks, and update_ema."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from loguru import logger

from tinyexp_core.config.exceptions import ConfigValueError, ModelMismatchError
from tinyexp_core.logging import LoggerCfg, WandbCfg, tiny_logger_setup
from tinyexp_core.training.ema import update_ema


@pytest.fixture(autouse=True)
def _reset_logger():
    yield
    # Point our handlers back at a plain console so no sink outlives the test's streams.
    tiny_logger_setup()


def _read(path: Path) -> str:
    logger.complete()
    return path.read_text()


# ---------------------------------------------------------------- logging


def test_rank0_logs_info_to_file_and_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_logger_setup(str(tmp_path), distributed_rank=0)
    logger.info("hello from rank zero")
    text = _read(tmp_path / "log.txt")
    assert "hello from rank zero" in text
    assert "rank0" in text and "INFO" in text
    assert "hello from rank zero" in capsys.readouterr().err


def test_other_rank_suppresses_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_logger_setup(str(tmp_path), distributed_rank=1)
    logger.info("chatty info")
    logger.warning("real warning")
    assert not (tmp_path / "log.txt").exists()
    text = _read(tmp_path / "log_rank1.txt")
    assert "real warning" in text and "rank1" in text
    assert "chatty info" not in text
    err = capsys.readouterr().err
    assert "real warning" in err and "chatty info" not in err


def test_extra_sink_gets_lines_and_setup_twice_does_not_duplicate(tmp_path: Path) -> None:
    first: list[str] = []
    second: list[str] = []
    tiny_logger_setup(str(tmp_path), extra_sink=first.append)
    tiny_logger_setup(str(tmp_path), extra_sink=second.append)
    logger.info("only once")
    assert first == []
    assert len(second) == 1
    assert second[0].endswith("only once") and "rank0" in second[0]
    assert not second[0].endswith("\n")
    assert _read(tmp_path / "log.txt").count("only once") == 1


def test_extra_sink_ignored_on_other_ranks(tmp_path: Path) -> None:
    lines: list[str] = []
    tiny_logger_setup(str(tmp_path), distributed_rank=2, extra_sink=lines.append)
    logger.warning("worker warning")
    assert lines == []


def test_override_mode_truncates(tmp_path: Path) -> None:
    (tmp_path / "log.txt").write_text("old run\n")
    tiny_logger_setup(str(tmp_path), mode="o")
    logger.info("new run")
    text = _read(tmp_path / "log.txt")
    assert "old run" not in text and "new run" in text
    with pytest.raises(ConfigValueError, match="mode"):
        tiny_logger_setup(str(tmp_path), mode="x")


def test_logger_cfg_level_and_filename(tmp_path: Path) -> None:
    cfg = LoggerCfg(level="WARNING", filename="train.log")
    cfg.build_logger(str(tmp_path))
    logger.info("below level")
    logger.error("above level")
    text = _read(tmp_path / "train.log")
    assert "above level" in text and "below level" not in text
    with pytest.raises(ConfigValueError, match="level"):
        LoggerCfg(level="LOUD").validate()


def test_logger_cfg_logs_file_path(tmp_path: Path) -> None:
    LoggerCfg().build_logger(str(tmp_path), filename="other.txt")
    assert "other.txt" in _read(tmp_path / "other.txt")


# ---------------------------------------------------------------- wandb


def test_wandb_disabled_returns_none() -> None:
    assert WandbCfg().build_wandb() is None
    assert WandbCfg(enable_wandb=False, mode="online").build_wandb() is None


def test_wandb_non_zero_rank_returns_none() -> None:
    class Rank1:
        rank = 1

    assert WandbCfg(enable_wandb=True).build_wandb(Rank1()) is None


def test_wandb_bad_mode_rejected() -> None:
    from tinyexp_core import TinyExp, build_exp

    with pytest.raises(ConfigValueError, match="wandb_cfg.mode"):
        build_exp(TinyExp, ["wandb_cfg.mode=cloud"])


# ---------------------------------------------------------------- ema


class TinyBN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.bn = torch.nn.BatchNorm1d(2)


def test_update_ema_math() -> None:
    torch.manual_seed(0)
    model = TinyBN()
    ema = copy.deepcopy(model)
    old = {k: v.clone() for k, v in ema.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.bn.running_mean.fill_(3.0)
    model.bn.num_batches_tracked.fill_(5)

    update_ema(ema, model, 0.9)
    for name, param in model.named_parameters():
        expected = 0.9 * old[name] + 0.1 * param
        assert torch.allclose(dict(ema.named_parameters())[name], expected), name
    assert torch.equal(ema.bn.running_mean, torch.full((2,), 3.0))
    assert int(ema.bn.num_batches_tracked) == 5
    assert all(not p.requires_grad or p.grad is None for p in ema.parameters())


def test_update_ema_edges_and_errors() -> None:
    model = TinyBN()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    update_ema(ema, model, 0.0)
    for a, b in zip(ema.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigValueError, match="decay"):
            update_ema(ema, model, bad)
    with pytest.raises(ModelMismatchError):
        update_ema(torch.nn.Linear(3, 2), model, 0.5)


def test_update_ema_with_ddp_wrapped_model(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(TinyBN())
        ema = copy.deepcopy(model.module)
        with torch.no_grad():
            model.module.fc.weight.fill_(1.0)
            ema.fc.weight.fill_(0.0)
        update_ema(ema, model, 0.75)
        assert torch.allclose(ema.fc.weight, torch.full_like(ema.fc.weight, 0.25))
    finally:
        dist.destroy_process_group()
