"""Issue 13, Dagster half: a run terminated from GraphQL in the middle of an epoch leaves a
verified step-level checkpoint, and `tinyexp-dagster resume <run id>` continues it to
weights equal (torch.equal, every tensor) to an uninterrupted run's.

The runs go the way of runs started and stopped in the UI, as in test_termination.py: a
gRPC code server loads `tests.reliability.location`, `launchPipelineExecution` launches,
`terminateRun` stops. `train_cfg.step_delay_s` makes an epoch last seconds, so the stop
lands well inside epoch 1 (the test waits for the progress store to show that epoch)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from tests.reliability.support import (
    REPO_ROOT,
    alive_launcher_actors,
    materialization_metadata,
    pid_alive,
    redis_client,
    train_config,
)
from tests.reliability.test_termination import LAUNCH, TERMINATE
from tests.waiting import eventually
from tinyexp_core import checkpoint as ckpt
from tinyexp_core.progress import read_run
from tinyexp_core.training.stop import STOP_GRACE_S
from tinyexp_dagster.assets.training import RESUME_RUN_DIR_TAG
from tinyexp_dagster.resume import RESUMED_FROM_RUN_TAG

STEP_DELAY_S = 0.5
OVERRIDES = [
    "train_cfg.num_epochs=2",
    f"train_cfg.step_delay_s={STEP_DELAY_S}",
    "checkpoint_cfg.every_n_steps=4",
    "seed=3",
]


def _launch(context, execute) -> str:
    from dagster_graphql.test.utils import infer_job_selector

    params = {
        "selector": infer_job_selector(context, "mnist_training_pipeline"),
        "runConfigData": train_config(OVERRIDES),
        "mode": "default",
    }
    payload = execute(context, LAUNCH, {"executionParams": params}).data["launchPipelineExecution"]
    assert payload["__typename"] == "LaunchRunSuccess", payload
    return payload["run"]["runId"]


def _wait_in_epoch(url: str, run_id: str, epoch: int, timeout_s: float) -> dict[str, str]:
    client = redis_client(url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = read_run(client, run_id)
            if run.get("epoch") == str(epoch) and int(run.get("step") or -1) >= 1:
                return run
            assert run.get("status") in (None, "starting", "running"), run
            time.sleep(0.05)
        raise TimeoutError(f"run {run_id} never reached epoch {epoch}: {run}")
    finally:
        client.close()


def _weights(path: Path) -> dict:
    return ckpt.load_checkpoint(path)["model"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_terminated_mid_epoch_then_resume_cli_matches_an_uninterrupted_run(
    ray_cluster, redis_url, storage, launching_instance, monkeypatch
):
    import torch
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster_graphql.test.utils import execute_dagster_graphql

    instance = launching_instance
    env = {
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
        "TINYEXP_STORAGE_ROOT": str(storage),
        "TINYEXP_REDIS_URL": redis_url,
        "TINYEXP_NUM_WORKERS": "2",
        "TINYEXP_CPUS_PER_WORKER": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    target = ModuleTarget(
        module_name="tests.reliability.location",
        attribute=None,
        working_directory=str(REPO_ROOT),
        location_name="tinyexp",
    )
    with WorkspaceProcessContext(instance, target) as process:
        # The uninterrupted run: same config, same seed, same world size (2 ranks).
        full_id = _launch(process.create_request_context(), execute_dagster_graphql)
        assert eventually(lambda: instance.get_run_by_id(full_id).is_finished, timeout_s=240)
        assert instance.get_run_by_id(full_id).status == dg.DagsterRunStatus.SUCCESS

        run_id = _launch(process.create_request_context(), execute_dagster_graphql)
        seen = _wait_in_epoch(redis_url, run_id, epoch=1, timeout_s=180)
        ranks = [r for r in alive_launcher_actors() if r["ActorClassName"] == "_RankWorker"]
        pids = [int(r["Pid"]) for r in ranks]
        assert len(pids) == 2, ranks
        asked = time.monotonic()
        payload = execute_dagster_graphql(
            process.create_request_context(), TERMINATE, {"runId": run_id}
        ).data["terminateRun"]
        assert payload["__typename"] == "TerminateRunSuccess", payload
        assert eventually(lambda: not any(pid_alive(p) for p in pids), timeout_s=60)
        gone = time.monotonic() - asked
        assert eventually(lambda: instance.get_run_by_id(run_id).is_finished, timeout_s=30)

    print(
        f"\nterminateRun in epoch 1 (progress showed step {seen['step']}): ranks gone {gone:.1f} s"
    )
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
    # The bound: 15 s plus one step (a step here is the 0.5 s pause plus well under 1 s).
    assert gone <= STOP_GRACE_S + STEP_DELAY_S + 1.0, gone

    client = redis_client(redis_url)
    try:
        progress = read_run(client, run_id)
    finally:
        client.close()
    assert progress["status"] == "cancelled", progress
    checkpoints = storage / "runs" / run_id / "checkpoints"
    stop_file = Path(progress["last_checkpoint"])
    assert stop_file.parent == checkpoints and stop_file.name.startswith("step_"), progress
    ckpt.verify_checkpoint(stop_file)  # size and sha256 against its sidecar
    ckpt.verify_checkpoint(checkpoints / "last.pt")
    state = ckpt.load_checkpoint(stop_file)
    position = state["position"]
    assert position["epoch"] == 1 and 0 < position["step_in_epoch"] < position["num_steps"]
    assert position["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert stop_file.name == f"step_{state['step']:09d}.pt"
    assert torch.equal(
        ckpt.load_checkpoint(checkpoints / "last.pt")["model"]["fc2.weight"],
        state["model"]["fc2.weight"],
    )

    resumed = subprocess.run(
        [sys.executable, "-m", "tinyexp_dagster.cli", "--storage-root", str(storage)]
        + ["resume", run_id],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    last_line = resumed.stdout.strip().splitlines()[-1]
    new_id = last_line.split()[1]
    assert last_line == f"run {new_id} SUCCESS (resumed from run {run_id})", resumed.stdout
    new_run = instance.get_run_by_id(new_id)
    assert new_run.job_name == "mnist_training_pipeline"
    assert new_run.tags[RESUMED_FROM_RUN_TAG] == run_id
    assert new_run.tags[RESUME_RUN_DIR_TAG] == run_id
    # rank 0's log, streamed into the step log: it continued inside epoch 1
    step = position["step_in_epoch"]
    assert f"at epoch 1, step {step} of it, global step {state['step']}" in resumed.stderr
    meta = materialization_metadata(instance, new_id, "trained_model")
    assert meta["resumed_from"] == str(checkpoints / "last.pt")
    assert meta["epochs"] == 2

    full = _weights(storage / "runs" / full_id / "checkpoints" / "last.pt")
    ours = _weights(checkpoints / "last.pt")
    assert full.keys() == ours.keys()
    different = [k for k in full if not torch.equal(full[k], ours[k])]
    assert not different, f"tensors differ after resume: {different}"
