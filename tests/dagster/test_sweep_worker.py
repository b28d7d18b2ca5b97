"""`tinyexp-dagster sweep NAME run` trains its trials in long-lived trial workers
(`tinyexp_dagster.sweep.worker`): a failed run leaves its worker for the next trial, which
stays on the same Ray connection; a worker killed mid-trial fails that trial and is
replaced; Ctrl-C stops the running trial as on its own `dagster job execute` (run CANCELED,
exit 130) and leaves no worker behind.

As a user runs it: `python -m tinyexp_dagster.cli sweep ...` in a project folder whose
`pyproject.toml` names its definitions, a real Dagster instance, Redis, and one local Ray
(`ray up`) for the module. Trials are small: 1 rank, `gated` (the tabular example, 1 epoch,
a metric threshold no run meets), `slow` (the MNIST example on 256 synthetic samples, 2
epochs, steps slowed to 0.4 s so that a signal lands mid-epoch).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
import pytest

from tinyexp_core.progress import read_run
from tinyexp_core.services.redis_client import make_client

ROOT = Path(__file__).resolve().parents[2]
DEFS = textwrap.dedent(
    """
    import dagster as dg

    from tinyexp_dagster import default_resources, pipeline_defs

    SMALL = ["data_cfg.source=synthetic", "data_cfg.num_samples=256", "data_cfg.batch_size=32"]
    defs = dg.Definitions.merge(
        pipeline_defs(
            "gated",
            "tinyexp_core.examples.tabular_exp:Exp",
            ["train_cfg.num_epochs=1"],
            metric_threshold=1e-9,
            sweep={"module_cfg.dropout": [0.0, 0.1]},
            max_concurrent=1,
        ),
        pipeline_defs(
            "slow",
            "tinyexp_core.examples.mnist_exp:Exp",
            [*SMALL, "train_cfg.num_epochs=2", "train_cfg.step_delay_s=0.4"],
            sweep={"optimizer_cfg.lr": [0.01, 0.003]},
            max_concurrent=1,
        ),
        dg.Definitions(resources=default_resources()),
    )
    """
)
PYPROJECT = """[project]
name = "workers"
version = "0.0.1"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "workers"
code_location_target_module = "workers_defs"
"""


@dataclass
class Project:
    folder: Path
    env: dict[str, str]
    storage: Path

    def sweep(self, *args: str) -> subprocess.Popen:
        """`tinyexp-dagster sweep ARGS` in the project's folder, running."""
        command = [sys.executable, "-m", "tinyexp_dagster.cli", "sweep", *args]
        return subprocess.Popen(
            command,
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def runs(self, job: str) -> list[dg.DagsterRun]:
        with dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"]) as instance:
            return list(instance.get_runs(dg.RunsFilter(job_name=job)))

    def workers(self) -> list[psutil.Process]:
        """This project's trial workers that are still running."""
        found = []
        for proc in psutil.process_iter():
            try:
                line = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if "tinyexp_dagster.sweep.worker" in line and str(self.folder) in line:
                found.append(proc)
        return found

    def wait_mid_epoch(self, proc: subprocess.Popen, known: set[str]) -> str:
        """The id of a new `slow` run once its rank is a few steps into epoch 0."""
        client = make_client(self.env["TINYEXP_REDIS_URL"], socket_timeout_s=2.0)
        deadline = time.monotonic() + 240
        try:
            while time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()
                for run in self.runs("slow_training_pipeline"):
                    progress = read_run(client, run.run_id) if run.run_id not in known else {}
                    if progress.get("status") == "running" and int(progress["step"] or 0) >= 3:
                        return run.run_id
                time.sleep(0.3)
        finally:
            client.close()
        proc.kill()
        raise AssertionError(f"no slow run mid-epoch within 240 s: {proc.communicate()}")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Project]:
    """The project folder, its instance and storage root, and one `ray up` Ray for them."""
    from tinyexp_core.services.ray_head import start_head, stop_head

    folder = tmp_path_factory.mktemp("workers-project")
    (folder / "workers_defs.py").write_text(DEFS)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    home = folder / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    storage = folder / ".tinyexp"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "DAGSTER_HOME": str(home),
        "TINYEXP_STORAGE_ROOT": str(storage),
        "TINYEXP_REDIS_URL": redis_url,
        "TINYEXP_NUM_WORKERS": "1",
        "TINYEXP_CPUS_PER_WORKER": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    start_head(storage, num_cpus=2, warm_ranks=0)
    try:
        yield Project(folder, env, storage)
    finally:
        stop_head(storage)


@pytest.mark.timeout(600)
def test_a_failed_run_leaves_its_worker_for_the_next_trial(project: Project) -> None:
    proc = project.sweep("gated", "run", "--all")
    out, err = proc.communicate(timeout=540)

    assert proc.returncode == 1, out + err[-5000:]
    for trial in ("dropout=0", "dropout=0.1"):
        assert f"trial {trial}: FAILURE in" in out, out
    assert "  | " in err  # each failure's log tail
    runs = project.runs("gated_training_pipeline")
    assert len(runs) == 2 and all(r.status == dg.DagsterRunStatus.FAILURE for r in runs)
    logs = project.storage / "sweeps" / "gated"
    # One worker ran both trials, and its second trial used the first one's Ray connection.
    assert sorted(p.name for p in logs.glob("worker-*.log")) == ["worker-1.log"]
    second = (logs / "dropout=0.1.log").read_text()
    assert "this process stays connected to the local Ray" in second, second[-3000:]
    assert "RUN_FAILURE" in second and "minimum_metric" in second, second[-3000:]
    assert not project.workers()


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_trial_fails_that_trial_and_is_replaced(project: Project) -> None:
    known = {r.run_id for r in project.runs("slow_training_pipeline")}
    proc = project.sweep("slow", "run", "--all")
    run_id = project.wait_mid_epoch(proc, known)
    (worker,) = project.workers()
    worker.kill()
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 1, out + err[-5000:]
    assert "trial lr=0.01: FAILURE in" in out and "its worker died, exit -9" in out, out
    assert "trial lr=0.003: SUCCESS in" in out, out + err[-5000:]
    runs = {r.run_id: r for r in project.runs("slow_training_pipeline") if r.run_id not in known}
    assert runs[run_id].status == dg.DagsterRunStatus.FAILURE  # ended by the sweep command
    (other,) = [r for r in runs.values() if r.run_id != run_id]
    assert other.status == dg.DagsterRunStatus.SUCCESS
    logs = project.storage / "sweeps" / "slow"
    assert sorted(p.name for p in logs.glob("worker-*.log")) == ["worker-1.log", "worker-2.log"]
    assert not project.workers()


@pytest.mark.timeout(600)
def test_ctrl_c_stops_the_running_trial_and_leaves_no_worker(project: Project) -> None:
    known = {r.run_id for r in project.runs("slow_training_pipeline")}
    proc = project.sweep("slow", "run", "--all")
    run_id = project.wait_mid_epoch(proc, known)
    (worker,) = project.workers()  # the trial trains in a worker, in its own session
    assert worker.pid != proc.pid and os.getsid(worker.pid) != os.getsid(proc.pid)
    proc.send_signal(signal.SIGINT)  # the terminal's Ctrl-C reaches the command only
    out, err = proc.communicate(timeout=180)

    assert proc.returncode == 130, out + err[-5000:]
    assert "interrupted: the running trials were asked to stop" in err, err[-5000:]
    new = [r for r in project.runs("slow_training_pipeline") if r.run_id not in known]
    assert [r.run_id for r in new] == [run_id]  # the second trial never started
    assert new[0].status == dg.DagsterRunStatus.CANCELED
    progress = read_run(make_client(project.env["TINYEXP_REDIS_URL"]), run_id)
    assert progress["status"] == "cancelled", progress
    log = (project.storage / "sweeps" / "slow" / "lr=0.01.log").read_text()
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines[-1] == f"continue with: tinyexp-dagster resume {run_id}", lines[-15:]
    assert "every rank checkpointed" in log, log[-3000:]
    assert not project.workers()


def test_a_kept_connection_serves_the_next_sessions_until_it_ends(monkeypatch) -> None:
    """`kept_connection` (the worker's Ray across trials): one connect for several sessions
    to a running Ray, shut down when it ends; a Ray started for a run (`local`) is still
    stopped with its run; outside it, every session connects and disconnects."""
    import ray

    from tinyexp_core.launchers import ray_session as rs

    calls: list[str] = []
    state = {"connected": False}

    def init(**kwargs: object) -> None:
        calls.append(f"init {kwargs['address']}")
        state["connected"] = True

    def shutdown() -> None:
        calls.append("shutdown")
        state["connected"] = False

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    monkeypatch.setattr(ray, "is_initialized", lambda: state["connected"])
    monkeypatch.setattr(rs, "_check_reachable", lambda address, timeout_s: None)
    monkeypatch.setattr(rs, "_is_loopback", lambda address: False)

    with rs.kept_connection():
        for _ in range(3):
            with rs.ray_session("10.1.2.3:6379"):
                pass
        assert rs.kept_address() == "10.1.2.3:6379"
        assert calls == ["init 10.1.2.3:6379"]
    assert calls == ["init 10.1.2.3:6379", "shutdown"] and rs.kept_address() == ""

    calls.clear()
    with rs.kept_connection():
        with rs.ray_session("local"):
            pass
        assert calls == ["init local", "shutdown"] and rs.kept_address() == ""
    calls.clear()
    for _ in range(2):
        with rs.ray_session("10.1.2.3:6379"):
            pass
    assert calls == ["init 10.1.2.3:6379", "shutdown"] * 2


@pytest.mark.timeout(120)
def test_a_worker_that_cannot_start_fails_each_trial_with_its_own_log(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Each trial's worker dies before it opens the trial's log: the trial fails, and what
    is printed is the worker's own log; a new worker is tried for the next trial."""
    from tinyexp_dagster.cli_location import CodeLocation, Pipeline
    from tinyexp_dagster.sweep.trials import launch_all

    location = CodeLocation("-m", module_name="no_such_module_for_the_worker")
    pipeline = Pipeline("nope", location, ("trained_model",), ("a", "b"))
    with dg.DagsterInstance.ephemeral() as instance:
        failed = launch_all(instance, pipeline, ["a", "b"], 1, "batch", str(tmp_path))

    out, err = capsys.readouterr()
    assert failed == ["a", "b"], out + err
    for key in ("a", "b"):
        assert f"trial {key}: no run recorded (its worker died, exit 1) in" in out, out
    assert "no_such_module_for_the_worker" in err, err
    logs = sorted(p.name for p in (tmp_path / "sweeps" / "nope").glob("*.log"))
    assert logs == ["worker-1.log", "worker-2.log"]
