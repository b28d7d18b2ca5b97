"""docs/your-model.md's template experiment, run from the terminal as the page prints it.

The experiment files come from the page's code blocks (`<!-- file: PATH -->`), so the page
cannot drift from what is tested: the printed terminal command trains; SIGTERM mid-epoch on
two ranks checkpoints and stops (exit 3, the last line the command that continues it);
that command resumes and ends with weights `torch.equal` to an uninterrupted run's; the
progress hash shows the run's steps and epochs.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from tests.dagster.test_your_model_doc import doc_blocks
from tinyexp_core import checkpoint as ckpt

REPO_ROOT = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"epoch (\d+) step (\d+) loss")
MODULE = "regressor_project.regressor"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The page's experiment files in an empty folder outside the repository."""
    root = tmp_path_factory.mktemp("your-model")
    files, _ = doc_blocks()
    for relative, body in files.items():
        if relative.endswith(".py") and not relative.endswith("definitions.py"):
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
    return root


def _env(project: Path) -> dict[str, str]:
    path = os.pathsep.join([str(project), str(REPO_ROOT)])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _python(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "python", command
    return [sys.executable, *words[1:]]


def test_the_printed_terminal_command_trains(project: Path) -> None:
    _, commands = doc_blocks()
    done = subprocess.run(
        _python(commands["terminal"]),
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch 3/3" in done.stderr and '"best_value"' in done.stdout
    assert list((project / "data" / "datasets" / "diabetes").iterdir())  # prepared itself


def _stop_mid_epoch(args: list[str], project: Path) -> tuple[int, list[str]]:
    """Run, SIGTERM after a step of the second epoch; (exit status, stderr lines)."""
    proc = subprocess.Popen(
        args,
        cwd=project,
        env=_env(project),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line)
            match = STEP_LINE.search(line)
            if match and int(match.group(1)) >= 1:
                proc.send_signal(signal.SIGTERM)
                break
        lines.extend(proc.stderr)
        return proc.wait(timeout=60), lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_on_two_ranks_then_the_printed_command_resumes_bit_exact(
    project: Path, redis_url: str, tmp_path: Path
) -> None:
    from tinyexp_core.progress import read_progress
    from tinyexp_core.services.redis_client import make_client

    common = [
        "-m",
        MODULE,
        "launcher=mp",
        "num_workers=2",
        f"output_root={tmp_path}",
        "train_cfg.num_epochs=3",
        "data_cfg.batch_size=2",  # ~70 steps per epoch and rank: a stop lands mid-epoch
    ]
    full = subprocess.run(
        [sys.executable, *common, "run_id=full"],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert full.returncode == 0, full.stderr[-3000:]

    run_id = f"stop-{uuid.uuid4().hex[:8]}"
    watched = ["progress_cfg.throttle_s=0", f"progress_cfg.url={redis_url}"]
    # Ranks agree on a stop every step (not every ~0.2 s, up to 64 of these short steps):
    # the stop then lands a few steps after the signal, mid-epoch, on a loaded machine too.
    watched.append("checkpoint_cfg.agree_every_s=0")
    args = [sys.executable, *common, *watched, "logger_cfg.level=DEBUG", f"run_id={run_id}"]
    status, lines = _stop_mid_epoch(args, project)
    assert status == 3, "".join(lines[-40:])
    assert lines[-1].startswith("continue with: python -m regressor_project.regressor "), lines[-3:]
    assert f"run_id={run_id} resume_from=auto" in lines[-1]

    last = tmp_path / run_id / "checkpoints" / "last.pt"
    position = ckpt.load_checkpoint(last)["position"]
    assert position["world_size"] == 2
    assert position["epoch"] >= 1 and 0 < position["step_in_epoch"] < position["num_steps"]
    client = make_client(redis_url)
    try:
        progress = read_progress(client, run_id)
    finally:
        client.close()
    assert progress.status == "cancelled", progress
    assert progress.num_epochs == 3 and progress.num_steps == position["num_steps"]
    assert progress.epoch is not None and progress.epoch >= 1  # epochs ...
    assert progress.step is not None and progress.step >= 0  # ... and steps were reported
    assert progress.last_checkpoint.endswith(".pt") and progress.world_size == 2

    resumed = subprocess.run(
        _python(lines[-1].removeprefix("continue with: ").strip()),
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'"resumed_from": "{last}"' in resumed.stdout
    a = ckpt.load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = ckpt.load_checkpoint(last)["model"]
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # bit-identical
