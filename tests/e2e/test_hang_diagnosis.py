"""Hang diagnosis under a real `dagster-daemon`: a real 2-rank Ray training run has one rank
stopped with SIGSTOP; `stalled_training_sensor` (threshold 12 s, action terminate) records
every rank's py-spy stack on the run, terminates it, and the resume run completes from the
last step checkpoint. A second run whose resume run hangs again at the same step is failed,
naming the step, and not resumed a third time.

Runs are launched the way a user launches them outside the UI (`dagster job launch`: the
daemon dequeues them and a run worker starts a local Ray per run); the stopped rank's pid
comes from its registration in the progress store (`tinyexp:run:<run_id>:ranks`).

Two scales share the body (`Scale`): `short` (CI: `make test-e2e`) and `long` (`make
test-nightly`). Both run both halves with every assertion; `short` prepares a 900-image
subset of digits (10 steps an epoch per rank instead of 20), sleeps 0.5 s a step instead of
1.5 s, and declares `stalled_training_sensor` in its code location with a 5 s
`minimum_interval_seconds` instead of the product's 30 s (the same evaluation function,
target and default status; the daemon's sensor loop itself runs at most every 5 s, fixed in
Dagster), and its instance drains the run queue every second (Dagster's default: 5 s) and
evaluates sensors in threads, so a tick collecting stacks does not hold up the others.
`long` is the product's own sensor and instance defaults at the original step delay."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import E2EDeployment
from tests.e2e.helpers import (
    ManagedProcess,
    daemon_cmd,
    dagster_cmd,
    run_cli,
    run_failure_report,
    wait_for,
)

pytestmark = [pytest.mark.e2e]

STALL_AFTER_S = 12  # below this, a loaded box's Ray start or first step could look stalled
STOP_AT_STEP = 6  # first stall: stop rank 1 once rank 0 reported this step (0-based, epoch 0)
EVERY_N_STEPS = 4  # step checkpoints: the resume starts from global step 4
JOB = "mnist_training_pipeline"


@dataclass(frozen=True)
class Scale:
    """How long the scenario takes; the scenario and its assertions are the same."""

    # 0 = all 1797 digits: 20 steps an epoch per rank; 900: 10 (both past STOP_AT_STEP).
    num_samples: int
    # per step: long enough to stop a rank between two steps by polling Redis every 20 ms
    step_delay_s: float
    # the stall sensor's minimum_interval_seconds; None: the product's sensor (30 s)
    sensor_interval_s: int | None
    # after the repeated hang is failed: this long of later ticks must request nothing
    quiet_s: float
    # the instance's dagster.yaml ("" = Dagster's defaults)
    instance_yaml: str = ""


SHORT = Scale(
    num_samples=900,
    step_delay_s=0.5,
    sensor_interval_s=5,
    quiet_s=20,  # 4 sensor intervals
    instance_yaml=(
        "run_coordinator:\n  module: dagster.core.run_coordinator\n"
        "  class: QueuedRunCoordinator\n  config:\n    dequeue_interval_seconds: 1\n"
        "sensors:\n  use_threads: true\n  num_workers: 4\n"
        "telemetry:\n  enabled: false\n"
    ),
)
LONG = Scale(num_samples=0, step_delay_s=1.5, sensor_interval_s=None, quiet_s=35)


def _config(scale: Scale) -> dict:
    """One epoch; every step reported (the code location's Redis resource has throttle_s=0,
    which the orchestrator forces as progress_cfg.throttle_s), so the stalled step is exact."""
    overrides = [
        "train_cfg.num_epochs=1",
        f"train_cfg.step_delay_s={scale.step_delay_s}",
        f"checkpoint_cfg.every_n_steps={EVERY_N_STEPS}",
    ]
    ops = {"mnist__trained_model": {"config": {"overrides": overrides}}}
    if scale.num_samples:
        data = [f"data_cfg.num_samples={scale.num_samples}"]
        ops["mnist__prepared_dataset"] = {"config": {"overrides": data}}
    return {"ops": ops}


LOCATION = """
import dagster as dg

from tinyexp_dagster import default_resources, pipeline_defs
from tinyexp_dagster.resources import RedisProgressResource
from tinyexp_dagster.sensors import stalled_training_sensor


def build_defs(sensor_interval_s):
    resources = default_resources()
    resources["redis"] = RedisProgressResource(
        url=dg.EnvVar("TINYEXP_REDIS_URL"), throttle_s=0.0
    )
    pipeline = pipeline_defs("mnist", "tinyexp_core.examples.mnist_exp:Exp", metric_threshold=0.0)
    sensors = list(pipeline.sensors)
    if sensor_interval_s is not None:
        # The product's sensor (evaluation function, target, status), ticking more often.
        product = stalled_training_sensor
        sensor = dg.SensorDefinition(
            name=product.name,
            evaluation_fn=product.__wrapped__,
            minimum_interval_seconds=sensor_interval_s,
            target=dg.AssetSelection.all(),
            default_status=product.default_status,
            description=product.description,
        )
        sensors = [sensor if s.name == product.name else s for s in sensors]
    return dg.Definitions(
        assets=pipeline.assets,
        asset_checks=pipeline.asset_checks,
        jobs=pipeline.jobs,
        schedules=pipeline.schedules,
        sensors=sensors,
        resources=resources,
    )


defs = build_defs({sensor_interval_s})
"""
STALLED_RUN_TAG = "tinyexp/stalled_run"
STALLED_AT_TAG = "tinyexp/stalled_at"
STACK_EVENT = "every rank's stack"
LOOP_FRAME = "train (tinyexp_core/examples/mnist_exp.py"  # the loop, in every rank's stack
DETECT_S = 150  # threshold + a sensor interval (up to 30 s) + a busy daemon
RUN_S = 420


class Scenario:
    """The deployment, its daemon, Redis, and the pids this test stopped (resumed and
    killed at the end: no stopped process may outlive the test)."""

    def __init__(self, deployment: E2EDeployment, instance, daemon: ManagedProcess, client):
        self.deployment = deployment
        self.instance = instance
        self.daemon = daemon
        self.client = client
        self.stopped: list[int] = []

    def context(self) -> str:
        runs = [
            f"  {r.run_id} {r.job_name} {r.status.value} {dict(r.tags)}"
            for r in self.instance.get_runs(limit=10)
        ]
        return "runs:\n" + "\n".join(runs) + "\n" + self.daemon.tail()

    def launch(self, workspace: Path, config: Path, name: str) -> str:
        """`dagster job launch` (queued; the daemon launches it); returns the run id."""
        import dagster as dg

        before = {r.run_id for r in self.instance.get_runs()}
        result = run_cli(
            dagster_cmd("job", "launch", "-w", str(workspace), "-j", JOB, "-c", str(config)),
            self.deployment.env,
            log_path=self.deployment.logs / f"launch-{name}.log",
        )
        assert result.returncode == 0, result.stdout[-4000:]
        [run] = [
            r
            for r in self.instance.get_runs(filters=dg.RunsFilter(job_name=JOB))
            if r.run_id not in before
        ]
        return run.run_id

    def ranks(self, run_id: str, num: int = 2) -> dict[int, int]:
        """rank -> pid, once `num` ranks of the run's latest attempt registered."""
        from tinyexp_core.progress.stacks import read_ranks

        def registered():
            self.daemon.check_alive()
            found = read_ranks(self.client, run_id)
            if len(found) == num:
                return {r.rank: r.pid for r in found}
            # A run that ended before its ranks registered will not register them.
            run = self.instance.get_run_by_id(run_id)
            assert not run.is_finished, run_failure_report(self.instance, run_id)
            return None

        return wait_for(
            registered, timeout_s=RUN_S, what=f"{num} ranks of {run_id}", context=self.context
        )

    def stop_rank_at(self, run_id: str, pid: int, step: int) -> tuple[int, int]:
        """SIGSTOP `pid` as soon as rank 0 reported epoch 0 `step` (polled every 20 ms:
        the ranks then sit in the step delay); returns (epoch, step) as reported then."""
        from tinyexp_core.progress import read_progress

        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            progress = read_progress(self.client, run_id)
            if progress.step is not None and progress.step >= step:
                os.kill(pid, signal.SIGSTOP)
                self.stopped.append(pid)
                assert (progress.epoch, progress.step) == (0, step), (
                    f"rank 0 was past step {step} when polled: {progress}"
                )
                return progress.epoch, progress.step
            assert progress.status in ("", "starting", "running"), progress
            time.sleep(0.02)
        raise AssertionError(f"run {run_id} never reached step {step}\n{self.context()}")

    def stack_event(self, run_id: str):
        """The sensor's engine event with the stacks, once written."""

        def event():
            self.daemon.check_alive()
            for record in self.instance.all_logs(run_id):
                e = record.dagster_event
                if e is not None and e.is_engine_event and STACK_EVENT in (e.message or ""):
                    return e
            return None

        return wait_for(event, timeout_s=DETECT_S, what=f"stacks on {run_id}", context=self.context)

    def finished(self, run_id: str):
        def done():
            self.daemon.check_alive()
            run = self.instance.get_run_by_id(run_id)
            return run if run.is_finished else None

        return wait_for(done, timeout_s=RUN_S, what=f"{run_id} to finish", context=self.context)

    def resume_of(self, run_id: str):
        """The resume run the sensor requested for `run_id`."""
        import dagster as dg

        def requested():
            self.daemon.check_alive()
            runs = self.instance.get_runs(filters=dg.RunsFilter(tags={STALLED_RUN_TAG: run_id}))
            return runs[0] if runs else None

        return wait_for(
            requested, timeout_s=DETECT_S, what=f"a resume of {run_id}", context=self.context
        )

    def release_stopped(self) -> None:
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)


def _assert_stacks(event, pids: dict[int, int], stopped_pid: int) -> None:
    """One py-spy stack per rank, the stopped one dumped without pausing it."""
    meta = {k: v.value for k, v in event.event_specific_data.metadata.items()}
    assert "stacks of 2/2 rank(s)" in meta["collected"], meta["collected"]
    for rank, pid in pids.items():
        text = meta[f"rank_{rank}"]
        assert f"pid {pid}" in text and "via py-spy" in text, text[:400]
        assert LOOP_FRAME in text, f"rank {rank}'s stack lacks the training loop:\n{text}"
    assert f"pid {stopped_pid}, state T (stopped)): via py-spy --nonblocking" in meta["rank_1"]


@pytest.mark.timeout(880)
@pytest.mark.parametrize(
    "scale",
    [
        pytest.param(SHORT, id="short"),  # 4 min on a slow day
        pytest.param(LONG, id="long", marks=pytest.mark.nightly),  # 6 min on a slow day
    ],
)
def test_hung_rank_stacks_resume_and_a_repeated_hang_fails(
    deployment: E2EDeployment, tmp_path: Path, redis_url: str, scale: Scale
) -> None:
    import dagster as dg

    from tinyexp_core.progress import read_run, stacks_key
    from tinyexp_core.services.ray_head import stop_head
    from tinyexp_core.services.redis_client import make_client

    (deployment.home / "dagster.yaml").write_text(scale.instance_yaml)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_config(scale)))
    location = LOCATION.replace("{sensor_interval_s}", repr(scale.sensor_interval_s))
    (tmp_path / "location.py").write_text(location)
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump({"load_from": [{"python_file": {"relative_path": "location.py"}}]})
    )
    deployment.env.update(
        {"TINYEXP_STALL_AFTER_S": str(STALL_AFTER_S), "TINYEXP_STALL_ACTION": "terminate"}
    )
    # Create the SQLite storage before the daemon starts: the daemon, `dagster job launch`
    # and this process creating it at once can stamp two alembic heads (seen on a busy box).
    with deployment.instance() as instance:
        instance.get_runs(limit=1)
    daemon = ManagedProcess(
        "dagster-daemon",
        daemon_cmd("run", "-w", str(workspace)),
        deployment.env,
        deployment.logs / "dagster-daemon.log",
    )
    client = make_client(redis_url)
    scenario = None
    try:
        with deployment.instance() as instance:
            scenario = Scenario(deployment, instance, daemon, client)
            started = time.monotonic()

            # (1) A hang: rank 1 stopped at step 6 -> stacks of both ranks, terminated,
            # resumed from the step checkpoint, and the resume run completes.
            first = scenario.launch(workspace, config, "first")
            pids = scenario.ranks(first)
            epoch, step = scenario.stop_rank_at(first, pids[1], STOP_AT_STEP)
            _assert_stacks(scenario.stack_event(first), pids, pids[1])
            record = json.loads(client.get(stacks_key(first)))
            assert [r["method"] for r in record["report"]["ranks"]] == [
                "py-spy",
                "py-spy --nonblocking",
            ]
            resume = scenario.resume_of(first)
            assert resume.tags[STALLED_AT_TAG] == f"{epoch}:{step}"
            assert scenario.finished(first).status == dg.DagsterRunStatus.CANCELED
            done = scenario.finished(resume.run_id)
            assert done.status == dg.DagsterRunStatus.SUCCESS, run_failure_report(
                instance, resume.run_id
            )
            trained = instance.get_latest_materialization_event(
                dg.AssetKey(["mnist", "trained_model"])
            )
            assert trained.run_id == resume.run_id
            resumed_from = trained.asset_materialization.metadata["resumed_from"].value
            assert f"/runs/{first}/checkpoints/" in resumed_from, resumed_from
            # The last checkpoint before the hang is the step checkpoint at global step 4.
            resumed = f"step {EVERY_N_STEPS} of it, global step {EVERY_N_STEPS}"
            logs = [r.user_message for r in instance.all_logs(resume.run_id)]
            assert any("resumed from" in m and resumed in m for m in logs), [
                m for m in logs if "resumed" in m
            ]
            phase_1 = time.monotonic() - started

            # (2) The same hang twice: the resume run stopped at the step where its
            # predecessor hung -> failed, naming the step, with stacks; no third run.
            second = scenario.launch(workspace, config, "second")
            pids = scenario.ranks(second)
            epoch, step = scenario.stop_rank_at(second, pids[1], STOP_AT_STEP)
            scenario.stack_event(second)
            again = scenario.resume_of(second)
            pids_again = scenario.ranks(again.run_id)
            scenario.stop_rank_at(again.run_id, pids_again[1], step)
            event = scenario.stack_event(again.run_id)
            _assert_stacks(event, pids_again, pids_again[1])
            where = f"epoch {epoch} step {step}"
            verdict = f"run {again.run_id} stalled again at {where}, where run {second}"
            assert verdict in event.message, event.message
            assert event.event_specific_data.error.cls_name == "RepeatedStall"
            failed = scenario.finished(again.run_id)
            assert failed.status == dg.DagsterRunStatus.FAILURE, failed.status
            failures = [
                r.dagster_event.message
                for r in instance.all_logs(again.run_id)
                if r.dagster_event is not None
                and r.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE
            ]
            assert any(verdict in m for m in failures), failures
            progress = read_run(client, again.run_id)
            assert progress["status"] == "failed", progress
            assert verdict in progress["error"] and LOOP_FRAME in progress["error"]
            # Later ticks request nothing more for it.
            time.sleep(scale.quiet_s)
            third = instance.get_runs(filters=dg.RunsFilter(tags={STALLED_RUN_TAG: again.run_id}))
            assert not third, f"a third attempt was launched: {[r.run_id for r in third]}"
            print(
                f"hang diagnosis: phase 1 (stall, stacks, resume to success) {phase_1:.0f} s, "
                f"total {time.monotonic() - started:.0f} s"
            )
    finally:
        if scenario is not None:
            scenario.release_stopped()
        client.close()
        # The runs' default local Ray outlives them by design (warm, one per storage root):
        # stopped here, so that what outlives the daemon's shutdown is a leak.
        stop_head(deployment.storage_root)
        stragglers = daemon.stop()
    assert not stragglers, f"processes outlived the daemon's shutdown: {stragglers}"
