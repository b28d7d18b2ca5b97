"""Item 2: a RetryPolicy retry and a manual re-execution of a failed run resume from the last
valid checkpoint; no completed epoch is trained again and the epoch count matches an
uninterrupted run. A failure mid-epoch resumes from the last step checkpoint, inside the
epoch, to the weights of a run that never failed (bit-equality at epoch boundaries is also
shown in tests/core/test_distributed.py::test_resume_matches_uninterrupted_run)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tests.reliability.exps import read_trace
from tests.reliability.support import (
    ENV_REDIS,
    ENV_STORAGE,
    log_messages,
    materialization_metadata,
    prepared_dataset,
    redis_client,
    resources,
    step_errors,
    train_config,
    trained_model,
    training_pipeline_job,
)
from tinyexp_core.progress import read_run


def _fault(tmp_path: Path, failures: int, epoch: int) -> list[str]:
    marker = tmp_path / "fail-marker"
    marker.write_text(str(failures))
    return ["fault=raise", f"fault_epoch={epoch}", f"fault_marker={marker}"]


def _per_epoch(meta: dict) -> list[int]:
    return [row.data["epoch"] for row in meta["per_epoch"].records]


def test_retry_policy_resumes_from_the_last_checkpoint(
    ray_cluster, redis_url, storage, instance, tmp_path
):
    overrides = ["train_cfg.num_epochs=3", *_fault(tmp_path, failures=1, epoch=1)]
    result = dg.materialize(
        [prepared_dataset, trained_model],
        instance=instance,
        resources=resources(storage, redis_url),
        run_config=train_config(overrides),
    )
    assert result.success
    run_dir = storage / "runs" / result.run_id
    last = run_dir / "checkpoints" / "last.pt"

    # Attempt 1 trained epochs 0 and 1, then failed; the retry trained epoch 2 only.
    trace = read_trace(run_dir)
    assert [(t["epoch"], t["attempt"]) for t in trace] == [(0, 1), (1, 1), (2, 2)]
    (retry_error,) = step_errors(instance, result.run_id)
    assert "worker rank 0 failed" in retry_error
    assert "injected failure after epoch 1" in retry_error

    meta = materialization_metadata(instance, result.run_id, "trained_model")
    assert meta["resumed_from"] == str(last)
    assert meta["epochs"] == 3  # an uninterrupted run of num_epochs=3 has 3
    assert _per_epoch(meta) == [1, 2, 3]
    # The rows of epochs 0 and 1 are attempt 1's, carried in the checkpoint, not re-run.
    rows = {r.data["epoch"]: r.data for r in meta["per_epoch"].records}
    for t in trace[:2]:
        speed = rows[t["epoch"] + 1]["samples_per_s"]
        assert speed > 0 and t["ended"] < trace[2]["started"]

    client = redis_client(redis_url)
    try:
        run = read_run(client, result.run_id)
        assert run["status"] == "succeeded" and run["attempt"] == "2", run
    finally:
        client.close()


def test_manual_reexecution_of_a_failed_run_resumes(
    ray_cluster, redis_url, storage, instance, tmp_path, monkeypatch
):
    monkeypatch.setenv(ENV_STORAGE, str(storage))
    monkeypatch.setenv(ENV_REDIS, redis_url)
    job = dg.reconstructable(training_pipeline_job)
    # Both attempts of the first run fail (after epochs 1 and 2); the re-execution succeeds.
    config = train_config(["train_cfg.num_epochs=4", *_fault(tmp_path, failures=2, epoch=1)])
    first = dg.execute_job(job, instance, run_config=config)
    assert not first.success
    assert len(step_errors(instance, first.run_id)) == 2

    again = dg.execute_job(
        job,
        instance,
        run_config=config,
        reexecution_options=dg.ReexecutionOptions.from_failure(first.run_id, instance),
    )
    assert again.success
    assert instance.get_run_by_id(again.run_id).root_run_id == first.run_id
    run_dir = storage / "runs" / first.run_id
    assert not (storage / "runs" / again.run_id).exists(), "the re-execution reuses the dir"

    trace = read_trace(run_dir)
    assert [t["epoch"] for t in trace] == [0, 1, 2, 3], trace
    assert [t["progress_run_id"] for t in trace] == [first.run_id] * 3 + [again.run_id]
    meta = materialization_metadata(instance, again.run_id, "trained_model")
    assert meta["resumed_from"] == str(run_dir / "checkpoints" / "last.pt")
    assert meta["epochs"] == 4 and _per_epoch(meta) == [1, 2, 3, 4]
    promoted = materialization_metadata(instance, again.run_id, "model_checkpoint")
    assert promoted["source_run"] == first.run_id


@pytest.mark.slow
def test_retry_of_a_failure_mid_epoch_resumes_from_the_step_checkpoint(
    ray_cluster, redis_url, storage, instance, tmp_path
):
    """Rank 0 fails after global step 18 (inside epoch 1) of a run that writes a step
    checkpoint every 4 steps; the RetryPolicy retry continues from step 16, inside the
    epoch, and ends with the weights (torch.equal) of a run that never failed."""
    import torch

    from tinyexp_core import checkpoint as ckpt

    base = ["train_cfg.num_epochs=2", "checkpoint_cfg.every_n_steps=4", "seed=3"]
    marker = tmp_path / "fail-marker"
    marker.write_text("1")
    fault = ["fault=raise_at_step", "fault_step=18", f"fault_marker={marker}"]
    assets = [prepared_dataset, trained_model]
    result = dg.materialize(
        assets,
        instance=instance,
        resources=resources(storage, redis_url),
        run_config=train_config([*base, *fault]),
    )
    assert result.success
    (retry_error,) = step_errors(instance, result.run_id)
    assert "injected failure after step 18" in retry_error

    run_dir = storage / "runs" / result.run_id
    checkpoints = run_dir / "checkpoints"
    state = ckpt.load_checkpoint(checkpoints / "step_000000016.pt")  # the one resumed from
    position = state["position"]
    assert position["epoch"] == 1 and 0 < position["step_in_epoch"] < position["num_steps"]
    resumed = f"at epoch 1, step {position['step_in_epoch']} of it, global step 16"
    assert any(resumed in m for m in log_messages(instance, result.run_id)), resumed
    meta = materialization_metadata(instance, result.run_id, "trained_model")
    assert meta["resumed_from"] == str(checkpoints / "last.pt")
    assert meta["epochs"] == 2 and _per_epoch(meta) == [1, 2]
    # Epoch 0 trained once (attempt 1); epoch 1 finished by the retry.
    trace = read_trace(run_dir)
    assert [(t["epoch"], t["attempt"]) for t in trace] == [(0, 1), (1, 2)]

    full = dg.materialize(
        assets,
        instance=instance,
        resources=resources(storage, redis_url),
        run_config=train_config(base),
    )
    assert full.success
    ours = ckpt.load_checkpoint(checkpoints / "last.pt")["model"]
    theirs = ckpt.load_checkpoint(storage / "runs" / full.run_id / "checkpoints" / "last.pt")
    different = [k for k in ours if not torch.equal(ours[k], theirs["model"][k])]
    assert not different, f"tensors differ after the retry: {different}"
