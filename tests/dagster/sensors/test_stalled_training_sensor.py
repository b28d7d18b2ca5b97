"""stalled_training_sensor against a real Redis and a real Dagster instance.

Stale heartbeats -> stalled (reported once), runs Dagster shows as ended, Redis outages,
terminate and resume, every rank's stack, a repeated hang at the same step, and the
`stalls` resource. Assertions only look at this test's run ids: the Redis server may be
shared.
"""

import json
import time
from typing import Any

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.launcher import RunLauncher
from dagster._serdes import ConfigurableClass

from tests.dagster.sensors.support import STALE_S, dagster_run, start_run, tick
from tests.hung_process import WAIT_FUNCTION, hung_rank
from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.progress import active_run_ids, ranks_key, read_run, run_key, stacks_key
from tinyexp_core.progress.stacks import RankStack, StackReport
from tinyexp_dagster import default_resources
from tinyexp_dagster.assets.training import RESUME_RUN_DIR_TAG
from tinyexp_dagster.resources import StallSettingsResource
from tinyexp_dagster.sensors import STALLED_AT_TAG, STALLED_RUN_TAG, stalled_training_sensor


class TerminatingRunLauncher(RunLauncher, ConfigurableClass):
    """A run launcher whose `terminate` works (like the default one under `dagster dev`):
    it reports the run canceled and records the call. Launching is not needed here."""

    terminated: list[str] = []

    def __init__(self, inst_data: Any = None) -> None:
        self._inst_data = inst_data

    @property
    def inst_data(self) -> Any:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> "TerminatingRunLauncher":
        return cls(inst_data=inst_data)

    def launch_run(self, context: Any) -> None:
        raise NotImplementedError("these tests never launch runs")

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        self._instance.report_run_canceled(run)
        TerminatingRunLauncher.terminated.append(run_id)
        return True


@pytest.fixture
def stall_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No stall setting comes from the environment: the `stalls` resource decides."""
    monkeypatch.setenv("TINYEXP_STALL_AFTER_S", "1")
    monkeypatch.setenv("TINYEXP_STALL_ACTION", "terminate")
    return monkeypatch


def test_stalled_run_is_marked_and_reported_once(
    redis_url, client, track, instance, resources, pipeline_job, stall_env
):
    run = dagster_run(instance, pipeline_job)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
    heartbeat = read_run(client, run.run_id)["heartbeat"]
    first = tick(stalled_training_sensor, instance, None, resources)
    assert read_run(client, run.run_id)["status"] == "stalled"
    assert f"run {run.run_id} stalled" in first.skip_message
    assert not first.run_requests, "report mode requests nothing"
    assert json.loads(first.cursor)["stalls"] == [f"stall:{run.run_id}:{heartbeat}"]

    second = tick(stalled_training_sensor, instance, first.cursor, resources)
    assert f"run {run.run_id}" not in second.skip_message, "one report per stall"
    assert second.cursor == first.cursor and not second.run_requests


def test_fresh_heartbeat_is_not_a_stall_and_a_stalled_run_recovers(
    redis_url, client, track, instance, resources, pipeline_job, stall_env
):
    run = dagster_run(instance, pipeline_job)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time())
    data = tick(stalled_training_sensor, instance, None, resources)
    assert read_run(client, run.run_id)["status"] == "running"
    assert "none of this instance stalled (threshold 60 s)" in data.skip_message
    assert json.loads(data.cursor) == {"stalls": []}

    client.hset(run_key(run.run_id), "status", "stalled")  # marked by an earlier tick
    tick(stalled_training_sensor, instance, data.cursor, resources)
    assert read_run(client, run.run_id)["status"] == "running"


@pytest.mark.parametrize(
    ("dagster_status", "final"),
    [(dg.DagsterRunStatus.FAILURE, "failed"), (dg.DagsterRunStatus.SUCCESS, "succeeded")],
)
def test_runs_dagster_shows_as_ended_leave_the_active_set(
    redis_url, client, track, instance, resources, pipeline_job, stall_env, dagster_status, final
):
    run = dagster_run(instance, pipeline_job, status=dagster_status)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
    data = tick(stalled_training_sensor, instance, None, resources)
    progress = read_run(client, run.run_id)
    assert progress["status"] == final, "its real final status, not stalled"
    assert run.run_id not in active_run_ids(client)
    assert client.ttl(run_key(run.run_id)) > 0
    assert f"run {run.run_id} ended ({final})" in data.skip_message
    assert bool(progress["error"]) == (final == "failed")


def test_runs_unknown_to_the_instance_are_left_alone(
    redis_url, client, instance, resources, new_run_id, stall_env
):
    rid = new_run_id()  # a standalone CLI run, or another deployment's
    start_run(redis_url, rid, heartbeat=time.time() - STALE_S)
    tick(stalled_training_sensor, instance, None, resources)
    assert read_run(client, rid)["status"] == "running"
    assert rid in active_run_ids(client)


def test_redis_down_is_not_a_stall(
    redis_url, client, track, instance, down_resources, pipeline_job, stall_env
):
    run = dagster_run(instance, pipeline_job)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
    data = tick(stalled_training_sensor, instance, None, down_resources)
    assert data.skip_message.startswith("Redis unreachable at redis://127.0.0.1:")
    assert "stalled" not in data.skip_message
    assert not data.run_requests and data.cursor is None
    assert read_run(client, run.run_id)["status"] == "running"


def test_terminate_action_requests_one_resume_run(
    redis_url, client, track, resources, pipeline_job, stall_env
):
    resources["stalls"] = StallSettingsResource(after_s=60, action="terminate")
    launcher = {"module": __name__, "class": TerminatingRunLauncher.__name__}
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        run = dagster_run(instance, pipeline_job)
        track(run.run_id)
        start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
        heartbeat = read_run(client, run.run_id)["heartbeat"]
        first = tick(stalled_training_sensor, instance, None, resources)
        [request] = first.run_requests
        assert TerminatingRunLauncher.terminated[-1] == run.run_id
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
        assert request.run_key == f"stall:{run.run_id}:{heartbeat}"
        assert request.job_name is None  # the stalled pipeline's assets, selected by key
        assert set(request.asset_selection) == {
            dg.AssetKey(["mnist", a])
            for a in ("trained_model", "model_checkpoint", "model_evaluation")
        }
        assert request.tags[RESUME_RUN_DIR_TAG] == run.run_id
        assert request.tags[STALLED_RUN_TAG] == run.run_id
        assert request.tags[STALLED_AT_TAG] == "0:5", "where it hung, for the same-step rule"
        train = request.run_config["ops"]["mnist__trained_model"]["config"]
        assert train == {"overrides": ["train_cfg.num_epochs=3"], "resume": "auto"}
        assert set(request.run_config["ops"]) <= {
            "mnist__trained_model",
            "mnist__model_checkpoint",
            "mnist__model_evaluation",
        }

        again = tick(stalled_training_sensor, instance, first.cursor, resources)
        assert not again.run_requests, "one request per stall"


def test_no_resume_when_the_run_cannot_be_terminated(
    redis_url, client, track, resources, pipeline_job, stall_env
):
    """DagsterInstance.ephemeral()'s run launcher cannot terminate: two trainers must not
    share a run directory, so nothing is requested."""
    resources["stalls"] = StallSettingsResource(after_s=60, action="terminate")
    instance = dg.DagsterInstance.ephemeral()
    run = dagster_run(instance, pipeline_job)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
    data = tick(stalled_training_sensor, instance, None, resources)
    assert not data.run_requests
    assert read_run(client, run.run_id)["status"] == "stalled"
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED


def _engine_events(instance: dg.DagsterInstance, run_id: str) -> list[Any]:
    return [
        r.dagster_event
        for r in instance.all_logs(run_id)
        if r.dagster_event is not None
        and r.dagster_event.event_type == DagsterEventType.ENGINE_EVENT
    ]


def test_a_stall_records_every_ranks_stack_on_the_run(
    redis_url, client, track, instance, resources, pipeline_job, stall_env, tmp_path
):
    """Two real rank processes (one SIGSTOPped, one missing from a world of 3): the engine
    event on the run holds one stack per reachable rank and names the missing one; the
    progress store holds the same record."""
    import os
    import signal

    run = dagster_run(instance, pipeline_job)
    track(run.run_id)
    start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
    client.hset(run_key(run.run_id), "world_size", "3")
    try:
        with (
            hung_rank(redis_url, run.run_id, 0, tmp_path),
            hung_rank(redis_url, run.run_id, 1, tmp_path) as stopped,
        ):
            os.kill(stopped.pid, signal.SIGSTOP)
            data = tick(stalled_training_sensor, instance, None, resources)
    finally:
        client.delete(ranks_key(run.run_id))
    assert f"run {run.run_id} stalled" in data.skip_message
    [event] = [e for e in _engine_events(instance, run.run_id) if "every rank's stack" in e.message]
    assert "at epoch 0 step 5" in event.message and "stacks of 2/3 rank(s)" in event.message
    meta = {k: v.value for k, v in event.event_specific_data.metadata.items()}
    assert meta["position"] == "epoch 0 step 5"
    for rank in (0, 1):
        assert WAIT_FUNCTION in meta[f"rank_{rank}"], meta[f"rank_{rank}"]
    assert f"pid {stopped.pid}, state T (stopped)): via py-spy --nonblocking" in meta["rank_1"]
    assert "rank 2" in meta["collected"] and "never registered" in meta["rank_2"]
    record = json.loads(client.get(stacks_key(run.run_id)))
    client.delete(stacks_key(run.run_id))
    assert (record["epoch"], record["step"], record["verdict"]) == (0, 5, "")
    assert [r["rank"] for r in record["report"]["ranks"]] == [0, 1, 2]
    assert WAIT_FUNCTION in record["report"]["ranks"][1]["stack"]


FAKE_STACK = "Thread 7 (idle): MainThread\n    allreduce (fake_gloo.py:12)"


@pytest.fixture
def fake_stacks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace py-spy with a canned report (one rank); records the calls."""
    calls: list[Any] = []

    def collect(ranks, *, world_size=None, budget_s=0.0):
        calls.append((list(ranks), world_size))
        rank = RankStack(0, "host-a", 123, "py-spy", FAKE_STACK)
        return StackReport(ranks=[rank], collected_at=time.time(), elapsed_s=0.1, host="host-a")

    monkeypatch.setattr("tinyexp_dagster.sensors.hang.collect_stacks", collect)
    return calls


@pytest.mark.parametrize("first_stall", ["0:5", "0:3"], ids=["same step", "another step"])
def test_a_resume_run_hanging_at_the_same_step_again_is_failed_not_resumed(
    redis_url, client, track, resources, pipeline_job, stall_env, fake_stacks, first_stall
):
    """The resume run of a run that stalled at `first_stall` stalls at epoch 0 step 5: at the
    same step it is terminated and failed (Dagster and the progress store name the step and
    carry the stacks), with no third attempt; at another step it is resumed again."""
    resources["stalls"] = StallSettingsResource(after_s=60, action="terminate")
    launcher = {"module": __name__, "class": TerminatingRunLauncher.__name__}
    tags = {STALLED_RUN_TAG: "first-run", STALLED_AT_TAG: first_stall, RESUME_RUN_DIR_TAG: "r"}
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        run = dagster_run(instance, pipeline_job, tags=tags)
        track(run.run_id)
        start_run(redis_url, run.run_id, heartbeat=time.time() - STALE_S)
        data = tick(stalled_training_sensor, instance, None, resources)
        assert fake_stacks, "stacks are collected before acting"
        assert TerminatingRunLauncher.terminated[-1] == run.run_id
        progress = read_run(client, run.run_id)
        client.delete(stacks_key(run.run_id))
        if first_stall != "0:5":
            [request] = data.run_requests
            assert request.tags[STALLED_AT_TAG] == "0:5"
            assert request.tags[STALLED_RUN_TAG] == run.run_id
            assert progress["status"] == "stalled"
            return
        assert not data.run_requests, "no third attempt"
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        verdict = f"run {run.run_id} stalled again at epoch 0 step 5, where run first-run"
        failures = [
            r.dagster_event.message
            for r in instance.all_logs(run.run_id)
            if r.dagster_event is not None
            and r.dagster_event.event_type == DagsterEventType.RUN_FAILURE
        ]
        assert any(verdict in m for m in failures), failures
        [event] = [
            e for e in _engine_events(instance, run.run_id) if "every rank's stack" in e.message
        ]
        error = event.event_specific_data.error
        assert verdict in event.message and error.cls_name == "RepeatedStall"
        assert "allreduce (fake_gloo.py:12)" in "".join(error.stack)
        assert "allreduce (fake_gloo.py:12)" in event.event_specific_data.metadata["rank_0"].value
        assert progress["status"] == "failed"
        assert verdict in progress["error"] and "allreduce (fake_gloo.py:12)" in progress["error"]
        assert run.run_id not in active_run_ids(client)
        assert client.ttl(run_key(run.run_id)) > 0


def test_stall_settings_are_a_resource_read_from_the_environment_once(monkeypatch):
    monkeypatch.delenv("TINYEXP_STALL_AFTER_S", raising=False)
    monkeypatch.delenv("TINYEXP_STALL_ACTION", raising=False)
    settings = StallSettingsResource.from_env()
    assert (settings.after_s, settings.action) == (600.0, "report")
    assert default_resources()["stalls"].after_s == 600.0
    monkeypatch.setenv("TINYEXP_STALL_AFTER_S", "90")
    monkeypatch.setenv("TINYEXP_STALL_ACTION", "terminate")
    settings = default_resources()["stalls"]
    assert (settings.after_s, settings.action) == (90.0, "terminate")
    for name, bad in [
        ("TINYEXP_STALL_AFTER_S", "soon"),
        ("TINYEXP_STALL_AFTER_S", "-5"),
        ("TINYEXP_STALL_ACTION", "kill"),
    ]:
        with monkeypatch.context() as env:
            env.setenv(name, bad)
            with pytest.raises(ConfigValueError, match=name):
                StallSettingsResource.from_env()
    with pytest.raises(Exception, match="after_s"):
        StallSettingsResource(after_s=0)
