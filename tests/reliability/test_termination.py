"""Item 3: terminating a run from Dagster stops training, removes the actors and the
placement group, and marks the run `cancelled` in Redis. Issue 26: a run terminated in its
last epoch or after training (during evaluation) stays CANCELED, its progress `cancelled`.

The run goes the way of a run started and stopped in the UI: `tests.reliability.location`
(the test experiment as the `mnist` pipeline) is loaded by a gRPC code server (a
subprocess), the run is launched with the GraphQL `launchPipelineExecution` mutation
(DefaultRunLauncher: the code server starts a run worker process), and stopped with the
GraphQL `terminateRun` mutation, which the UI's Terminate button sends: run coordinator ->
DefaultRunLauncher.terminate -> the code server's CancelExecution -> an interrupt in the
run worker, raised inside the `trained_model` step. The run worker connects to the
session's Ray (RAY_ADDRESS), so the actors it starts are visible here.
"""

from __future__ import annotations

import time

import dagster as dg
import pytest

from tests.reliability.support import (
    REPO_ROOT,
    alive_launcher_actors,
    events,
    new_placement_groups,
    op,
    pid_alive,
    placement_group_states,
    redis_client,
    train_config,
    wait_for_status,
)
from tests.waiting import eventually
from tinyexp_core.progress import ACTIVE_RUNS_KEY, read_run

LAUNCH = """
mutation($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
  }
}
"""

TERMINATE = """
mutation($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunSuccess { run { runId status } }
    ... on TerminateRunFailure { message }
    ... on PythonError { message stack }
  }
}
"""


@pytest.mark.timeout(300)
def test_terminate_from_dagster_stops_training_and_cleans_up(
    ray_cluster, redis_url, storage, launching_instance, monkeypatch
):
    instance = launching_instance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster_graphql.test.utils import execute_dagster_graphql, infer_job_selector

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.get_runtime_context().gcs_address)
    monkeypatch.setenv("TINYEXP_STORAGE_ROOT", str(storage))
    monkeypatch.setenv("TINYEXP_REDIS_URL", redis_url)
    monkeypatch.setenv("TINYEXP_NUM_WORKERS", "2")
    monkeypatch.setenv("TINYEXP_CPUS_PER_WORKER", "1")
    pgs_before = placement_group_states()
    target = ModuleTarget(
        module_name="tests.reliability.location",
        attribute=None,
        working_directory=str(REPO_ROOT),
        location_name="tinyexp",
    )
    with WorkspaceProcessContext(instance, target) as process:
        context = process.create_request_context()
        params = {
            "selector": infer_job_selector(context, "mnist_training_pipeline"),
            "runConfigData": train_config(["train_cfg.num_epochs=50"]),
            "mode": "default",
        }
        launched = execute_dagster_graphql(context, LAUNCH, {"executionParams": params})
        payload = launched.data["launchPipelineExecution"]
        assert payload["__typename"] == "LaunchRunSuccess", payload
        run_id = payload["run"]["runId"]

        try:
            wait_for_status(redis_url, run_id, ["running"], timeout_s=90)
        except TimeoutError:
            logs = [e.user_message for e in instance.all_logs(run_id)]
            raise AssertionError(f"{instance.get_run_by_id(run_id).status}: {logs}") from None
        ranks = [r for r in alive_launcher_actors() if r["ActorClassName"] == "_RankWorker"]
        pids = [int(r["Pid"]) for r in ranks]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids), ranks

        asked = time.time()
        terminated = execute_dagster_graphql(
            process.create_request_context(), TERMINATE, {"runId": run_id}
        )
        payload = terminated.data["terminateRun"]
        assert payload["__typename"] == "TerminateRunSuccess", payload

        assert eventually(lambda: not any(pid_alive(p) for p in pids), timeout_s=30)
        assert eventually(lambda: not alive_launcher_actors(), timeout_s=30)
        stopped = time.time() - asked
        assert eventually(lambda: instance.get_run_by_id(run_id).is_finished, timeout_s=30)
        finished = time.time() - asked

    run = instance.get_run_by_id(run_id)
    assert run.status == dg.DagsterRunStatus.CANCELED, run.status
    assert stopped < 30 and finished < 30, (stopped, finished)
    print(f"timing: terminate -> ranks gone {stopped:.1f} s, run CANCELED {finished:.1f} s")
    new = new_placement_groups(pgs_before)
    assert len(new) == 1 and set(new.values()) == {"REMOVED"}, new

    client = redis_client(redis_url)
    try:
        progress = read_run(client, run_id)
        assert progress["status"] == "cancelled", progress
        assert not client.sismember(ACTIVE_RUNS_KEY, run_id)
    finally:
        client.close()

    # Dagster's interrupt became a stop: every rank checkpointed, the step failed once and
    # was not retried (a retry would start training again in a terminated run); nothing
    # after prepared_dataset ran.
    failures = events(instance, run_id, dg.DagsterEventType.STEP_FAILURE)
    assert [e.step_key for e in failures] == ["mnist__trained_model"]
    error = failures[0].dagster_event.event_specific_data.error
    assert "the run was terminated: every rank checkpointed" in error.message, error
    assert f"continue with: tinyexp-dagster resume {run_id}" in error.message, error
    assert not events(instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    materialized = events(instance, run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)
    assert [e.dagster_event.asset_key.path for e in materialized] == [["mnist", "prepared_dataset"]]


def _step_started(instance: dg.DagsterInstance, run_id: str, step_key: str) -> bool:
    started = events(instance, run_id, dg.DagsterEventType.STEP_START)
    return any(e.step_key == step_key for e in started)


# How long evaluate() waits in the "evaluation" phase; the run is watched that long and a
# little more after it ends: an evaluation the terminate did not stop would finish, and
# mark the run, inside that window (as would a late rank of the last epoch, seconds long).
EVAL_DELAY_S = 20
WATCH_S = EVAL_DELAY_S + 5

# phase -> (overrides, what to wait for before terminating)
PHASES = {
    # 2 slowed epochs; terminated once the progress shows epoch 1 (0-based: the last)
    "last_epoch": (["train_cfg.num_epochs=2", "train_cfg.step_delay_s=0.05"], "epoch 1"),
    # 1 epoch; model_evaluation scores the train split (rank 0 scored val and test after
    # training, so those come from the registry's cache), its evaluate() waits
    # EVAL_DELAY_S there, and the run is terminated while it runs
    "evaluation": (
        ["train_cfg.num_epochs=1", f"eval_delay_s={EVAL_DELAY_S}", "eval_delay_split=train"],
        "mnist__model_evaluation",
    ),
}


def _run_config(phase: str, overrides: list[str]) -> dict:
    config = train_config(overrides)
    if phase == "evaluation":  # a split rank 0 did not score: the step scores it itself
        config["ops"][op("model_evaluation")] = {"config": {"split": "train"}}
    return config


@pytest.mark.timeout(400)
@pytest.mark.parametrize("phase", sorted(PHASES))
def test_a_run_terminated_late_stays_canceled(
    ray_cluster, redis_url, storage, launching_instance, monkeypatch, phase
):
    """Terminated in the last epoch or after training, the run is CANCELED and its progress
    `cancelled` for the following WATCH_S: no late rank, step or sensor marks it finished."""
    instance = launching_instance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster_graphql.test.utils import execute_dagster_graphql, infer_job_selector

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.get_runtime_context().gcs_address)
    monkeypatch.setenv("TINYEXP_STORAGE_ROOT", str(storage))
    monkeypatch.setenv("TINYEXP_REDIS_URL", redis_url)
    overrides, until = PHASES[phase]
    target = ModuleTarget(
        module_name="tests.reliability.location",
        attribute=None,
        working_directory=str(REPO_ROOT),
        location_name="tinyexp",
    )
    client = redis_client(redis_url)
    with WorkspaceProcessContext(instance, target) as process:
        context = process.create_request_context()
        params = {
            "selector": infer_job_selector(context, "mnist_training_pipeline"),
            "runConfigData": _run_config(phase, overrides),
            "mode": "default",
        }
        launched = execute_dagster_graphql(context, LAUNCH, {"executionParams": params})
        payload = launched.data["launchPipelineExecution"]
        assert payload["__typename"] == "LaunchRunSuccess", payload
        run_id = payload["run"]["runId"]

        def reached() -> bool:
            if until.startswith("epoch "):
                progress = read_run(client, run_id)
                return progress.get("status") == "running" and progress.get("epoch") == "1"
            return _step_started(instance, run_id, until)

        if not eventually(reached, timeout_s=180):
            logs = [e.user_message for e in instance.all_logs(run_id)]
            raise AssertionError(f"{phase} not reached: {read_run(client, run_id)} {logs[-20:]}")
        terminated = execute_dagster_graphql(
            process.create_request_context(), TERMINATE, {"runId": run_id}
        )
        assert terminated.data["terminateRun"]["__typename"] == "TerminateRunSuccess", terminated
        assert eventually(lambda: instance.get_run_by_id(run_id).is_finished, timeout_s=60)

        seen = set()
        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:
            status = instance.get_run_by_id(run_id).status
            progress = read_run(client, run_id).get("status")
            seen.add((status, progress))
            time.sleep(1.0)
    client.close()
    assert seen == {(dg.DagsterRunStatus.CANCELED, "cancelled")}, seen
    assert not events(instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert not events(instance, run_id, dg.DagsterEventType.RUN_SUCCESS)
