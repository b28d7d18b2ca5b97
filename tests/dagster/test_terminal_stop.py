"""Issue 22, must-show 2: Ctrl-C (SIGINT) or SIGTERM on `dagster job execute` mid-epoch is a
stop, never a retry. Every rank checkpoints, the run ends CANCELED, the process exits 130 /
143 with no native stack dump, its last line is the command that continues the run, and no
Ray or rank process is left; that command finishes the run with weights equal to an
uninterrupted run's. A second Ctrl-C ends the ranks at once, leaving nothing behind.

Real subprocesses: each `dagster job execute` starts (and stops) its own local Ray with 2
ranks (`RAY_ADDRESS=local`; by default a run leaves a warm Ray for the next one);
training is slowed (`train_cfg.step_delay_s`) on the small digits set."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml

from tests import leftovers
from tinyexp_core.progress import read_run
from tinyexp_core.services.redis_client import make_client

OVERRIDES = ["train_cfg.num_epochs=2", "seed=5", "data_cfg.batch_size=32"]
JOB = "mnist_training_pipeline"
BIN = Path(sys.executable).parent


def _run_config(delay_s: float) -> dict:
    overrides = [*OVERRIDES, f"train_cfg.step_delay_s={delay_s}"]
    return {
        "ops": {
            "mnist__trained_model": {"config": {"overrides": overrides}},
            # two epochs on digits; the accuracy gate is not what is tested here
            "mnist__model_evaluation": {"config": {"threshold": 0.1}},
        }
    }


class Project:
    """One DAGSTER_HOME, storage root and Redis; processes marked for the leftover check."""

    def __init__(self, root: Path, redis_url: str) -> None:
        self.root = root
        self.home = root / "dagster_home"
        self.home.mkdir(parents=True)
        (self.home / "dagster.yaml").write_text("")
        self.storage = root / "storage"
        self.redis_url = redis_url
        self.mark = uuid.uuid4().hex[:12]
        outer = os.environ.get(leftovers.ENV_SESSION, "")
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "TINYEXP_STORAGE_ROOT": str(self.storage),
            "TINYEXP_REDIS_URL": redis_url,
            leftovers.ENV_SESSION: f"{outer}:{self.mark}" if outer else self.mark,
        }
        # Each command starts its own local Ray and stops it (`local`), so "nothing left"
        # means nothing: not even the warm Ray a default run would leave for the next one.
        self.env["RAY_ADDRESS"] = "local"
        # What ran before (the session's Ray among it) is never this project's leftover.
        self.before = frozenset(_identities())

    def execute(self, delay_s: float) -> subprocess.Popen:
        config = self.root / f"run-{delay_s}.yaml"
        config.write_text(yaml.safe_dump(_run_config(delay_s)))
        command = [str(BIN / "dagster"), "job", "execute", "-m", "tinyexp_dagster.definitions"]
        command += ["-j", JOB, "-c", str(config)]
        return subprocess.Popen(
            command,
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def runs(self) -> list[dg.DagsterRun]:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            return list(instance.get_runs())

    def status(self, run_id: str) -> dg.DagsterRunStatus:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            return instance.get_run_by_id(run_id).status

    def weights(self, run_dir_id: str) -> dict:
        from tinyexp_core.checkpoint import load_checkpoint

        path = self.storage / "runs" / run_dir_id / "checkpoints" / "last.pt"
        return load_checkpoint(path)["model"]

    def leftovers(self) -> list:
        snap = leftovers.Snapshot(self.mark, self.before, 0.0)
        return leftovers.wait_for_leftovers(snap)


def _identities() -> list[tuple[int, float]]:
    found = []
    for proc in psutil.process_iter():
        try:
            found.append((proc.pid, proc.create_time()))
        except psutil.Error:
            continue
    return found


def _wait_mid_epoch(project: Project, proc: subprocess.Popen, timeout_s: float = 240) -> str:
    """The run's id, once its ranks are a few steps into epoch 0."""
    client = make_client(project.redis_url, socket_timeout_s=2.0)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            runs = project.runs()
            if runs:
                progress = read_run(client, runs[0].run_id)
                if progress.get("status") == "running" and int(progress.get("step") or 0) >= 3:
                    return runs[0].run_id
            time.sleep(0.3)
    finally:
        client.close()
    proc.kill()
    raise AssertionError(f"no run mid-epoch within {timeout_s} s: {proc.communicate()[0][-4000:]}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> dict:
    """The final weights of the same job run to the end without a stop."""
    project = Project(tmp_path_factory.mktemp("uninterrupted"), redis_url)
    proc = project.execute(delay_s=0.0)
    out, _ = proc.communicate(timeout=540)
    assert proc.returncode == 0, out[-4000:]
    (run,) = project.runs()
    return project.weights(run.run_id)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_terminal_signal_stops_the_run_and_its_command_resumes_it(
    tmp_path: Path, redis_url: str, uninterrupted: dict, signum: int
) -> None:
    import torch

    project = Project(tmp_path, redis_url)
    proc = project.execute(delay_s=0.15)
    run_id = _wait_mid_epoch(project, proc)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=180)

    assert proc.returncode == 128 + signum, out[-6000:]
    lines = [line for line in out.splitlines() if line.strip()]
    command = f"tinyexp-dagster resume {run_id}"
    assert lines[-1] == f"continue with: {command}", lines[-15:]
    for absent in ("STEP_RESTARTED", "STEP_UP_FOR_RETRY", "RUN_SUCCESS", "received at time="):
        assert absent not in out, (absent, out[-6000:])
    assert "RUN_CANCELED" in out, out[-6000:]
    assert project.status(run_id) == dg.DagsterRunStatus.CANCELED
    progress = read_run(make_client(redis_url), run_id)
    assert progress["status"] == "cancelled", progress
    left = project.leftovers()
    leftovers.kill(left)
    assert not left, leftovers.describe(left)

    argv = shlex.split(command)
    resumed = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=tmp_path,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
    new = [r for r in project.runs() if r.run_id != run_id]
    assert len(new) == 1 and new[0].status == dg.DagsterRunStatus.SUCCESS
    weights = project.weights(run_id)  # the resume run continued the stopped run's directory
    assert weights.keys() == uninterrupted.keys()
    different = [k for k in weights if not torch.equal(weights[k], uninterrupted[k])]
    assert not different, f"weights differ from the uninterrupted run's: {different}"
    left = project.leftovers()
    leftovers.kill(left)
    assert not left, leftovers.describe(left)


@pytest.mark.timeout(600)
def test_a_second_ctrl_c_ends_the_ranks_at_once(tmp_path: Path, redis_url: str) -> None:
    project = Project(tmp_path, redis_url)
    # Slow steps: a checkpoint-then-stop waits for two of them (about 6 s), so the second
    # Ctrl-C, 1.5 s after the first (two signals in one poll of the driver would be one),
    # comes while the ranks are still on their way to the agreed step.
    proc = project.execute(delay_s=3.0)
    run_id = _wait_mid_epoch(project, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.5)
    asked = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    took = time.monotonic() - asked

    assert proc.returncode == 130, out[-6000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[-1] == f"continue with: tinyexp-dagster resume {run_id}", lines[-15:]
    assert "ending the ranks now" in out, out[-6000:]
    assert "every rank checkpointed" not in out, out[-6000:]
    assert "STEP_UP_FOR_RETRY" not in out and "RUN_SUCCESS" not in out, out[-6000:]
    assert project.status(run_id) == dg.DagsterRunStatus.CANCELED
    left = project.leftovers()
    leftovers.kill(left)
    assert not left, leftovers.describe(left)
    print(f"timing: second Ctrl-C -> process exited {took:.1f} s")
