"""A checkpoint write that fails for a real kernel reason (issue 26): the run ends with one
line naming the file and the OS error, the previous checkpoint still verifies, no temp file
is left, and resuming once the fault is gone finishes with an uninterrupted run's weights.

Faults: a file-size limit (RLIMIT_FSIZE: EFBIG), a full filesystem (a small tmpfs, ENOSPC)
and a read-only checkpoint directory (a read-only bind mount, EROFS), the last two in a
private mount namespace (`unshare -rm`, no root needed); and the checkpoint directory
removed under a running training (recreated, with a warning).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.hooks import wrapped
from tinyexp_core import checkpoint as ckpt
from tinyexp_core.config.factory import build_exp
from tinyexp_core.examples.tabular_exp import Exp
from tinyexp_core.launchers import run_in_process
from tinyexp_core.training import TrainingSession

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = "tinyexp_core.examples.tabular_exp"
ERRNO_TEXT = {
    "fsize": "[Errno 27] File too large",
    "full": "[Errno 28] No space left on device",
    "readonly": "[Errno 30] Read-only file system",
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    return Exp().prepare_data(str(tmp_path_factory.mktemp("store"))).path


@pytest.fixture(scope="module")
def straight(prepared, tmp_path_factory) -> dict[str, torch.Tensor]:
    """An uninterrupted 3-epoch run's final weights."""
    root = tmp_path_factory.mktemp("straight")
    done = _cli(root, prepared, "train_cfg.num_epochs=3")
    assert done.returncode == 0, done.stderr[-3000:]
    return ckpt.load_checkpoint(root / "r" / "checkpoints" / "last.pt")["model"]


def _cli(root: Path, prepared: str, *extra: str, preexec=None) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", MODULE, f"output_root={root}", "run_id=r"]
    args += [f"data_cfg.prepared_path={prepared}", "progress_cfg.enabled=false", *extra]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, preexec_fn=preexec
    )


def _assert_one_line_error(fault: str, status: int, stderr: str, checkpoints: Path) -> None:
    assert status == 1, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    assert "could not write checkpoint" in last_line, stderr[-3000:]
    assert str(checkpoints) in last_line and ERRNO_TEXT[fault] in last_line, last_line
    assert "Traceback" not in stderr, stderr[-3000:]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def _no_temp_files(names: list[str]) -> None:
    assert [n for n in names if ".tmp-" in n] == [], names


def _limit_file_size() -> None:
    # Above log.txt and config.yaml, below one checkpoint (~40 KB).
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def test_a_file_size_limit_fails_the_run_and_resume_finishes_it(prepared, straight, tmp_path):
    checkpoints = tmp_path / "r" / "checkpoints"
    assert _cli(tmp_path, prepared, "train_cfg.num_epochs=1").returncode == 0
    faulty = _cli(
        tmp_path, prepared, "train_cfg.num_epochs=3", "resume_from=auto", preexec=_limit_file_size
    )
    _assert_one_line_error("fsize", faulty.returncode, faulty.stderr, checkpoints)
    ckpt.verify_checkpoint(checkpoints / "last.pt")  # the epoch before the fault
    assert ckpt.load_checkpoint(checkpoints / "last.pt")["epoch"] == 0
    _no_temp_files([p.name for p in checkpoints.iterdir()])

    resumed = _cli(tmp_path, prepared, "train_cfg.num_epochs=3", "resume_from=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same(ckpt.load_checkpoint(checkpoints / "last.pt")["model"], straight)


@pytest.mark.parametrize("fault", ["full", "readonly"])
def test_a_full_or_read_only_filesystem_fails_the_run_and_resume_finishes_it(
    fault, prepared, straight, tmp_path
):
    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare makes the private mount namespace"
    out = tmp_path / "report.json"
    driver = [sys.executable, "-m", "tests.reliability.fs_faults", fault, str(tmp_path)]
    done = subprocess.run(
        [unshare, "-rm", *driver, prepared, str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads(out.read_text())
    assert report["first"]["status"] == 0, report["first"]["stderr"]
    checkpoints = tmp_path / "fs" / "r" / "checkpoints"
    _assert_one_line_error(
        fault, report["faulty"]["status"], report["faulty"]["stderr"], checkpoints
    )
    after = report["after_fault"]
    assert after["last_verifies"] is True and after["last_epoch"] == 0, after
    _no_temp_files(after["files"])
    assert report["resumed"]["status"] == 0, report["resumed"]["stderr"]
    _assert_same(ckpt.load_checkpoint(tmp_path / "final.pt")["model"], straight)


def test_a_removed_checkpoint_directory_is_recreated_and_resume_works(prepared, tmp_path, capfd):
    def remove_after_first_epoch(session: TrainingSession, *_, **__) -> None:
        if session.epoch == 0:
            session.flush_checkpoints()
            shutil.rmtree(Path(session.last_checkpoint_path).parent)

    common = [f"output_root={tmp_path}", "run_id=r", f"data_cfg.prepared_path={prepared}"]
    common.append("progress_cfg.enabled=false")
    exp = build_exp(Exp, [*common, "train_cfg.num_epochs=2"])
    with wrapped(TrainingSession, "end_epoch", after=remove_after_first_epoch):
        result = run_in_process(exp)
    assert "vanished; writing it anew" in capfd.readouterr().err
    assert result.num_epochs == 2
    checkpoints = tmp_path / "r" / "checkpoints"
    assert ckpt.load_checkpoint(checkpoints / "last.pt")["epoch"] == 1  # written again
    assert not (checkpoints / "epoch_0000.pt").exists()  # gone with the directory

    again = build_exp(Exp, [*common, "train_cfg.num_epochs=3", "resume_from=auto"])
    resumed = run_in_process(again)
    assert resumed.resumed_from.endswith("last.pt") and resumed.num_epochs == 3
    # Against an uninterrupted run in this process too: the CLI's launcher (another process)
    # does not reproduce an in-process run's weights to the last bit.
    plain = [f"output_root={tmp_path / 'plain'}", *common[1:], "train_cfg.num_epochs=3"]
    uninterrupted = run_in_process(build_exp(Exp, plain))
    _assert_same(
        ckpt.load_checkpoint(checkpoints / "last.pt")["model"],
        ckpt.load_checkpoint(uninterrupted.checkpoints.last)["model"],
    )
