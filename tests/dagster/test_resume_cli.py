"""`tinyexp-dagster resume RUN_ID`: what it refuses (exit 2, one line naming the run) and
what the resume run is (same config and partition, linking tags). The end-to-end case, a
run terminated from GraphQL mid-epoch and resumed to equal weights, is
tests/reliability/test_resume_terminated.py."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tinyexp_core import checkpoint as ckpt
from tinyexp_dagster.assets.training import RESUME_RUN_DIR_TAG
from tinyexp_dagster.cli import main
from tinyexp_dagster.resume import RESUMED_FROM_RUN_TAG, plan_resume

CONFIG = {
    "ops": {
        "mnist__trained_model": {"config": {"overrides": ["seed=3"], "resume": "never"}},
        "mnist__prepared_dataset": {"config": {}},
    }
}


@pytest.fixture
def instance(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


def _run(instance, status: dg.DagsterRunStatus, **kwargs) -> dg.DagsterRun:
    from dagster._core.test_utils import create_run_for_test

    return create_run_for_test(
        instance, job_name="mnist_training_pipeline", status=status, **kwargs
    )


def _checkpoint(storage: Path, run_dir_id: str, *, valid: bool = True) -> Path:
    import torch

    path = storage / "runs" / run_dir_id / "checkpoints" / "last.pt"
    ckpt.save_checkpoint({"format": 1, "model": {"w": torch.zeros(2)}}, path)
    if not valid:
        path.write_bytes(path.read_bytes()[:10])
    return path


def _resume(run_id: str, storage: Path, capsys) -> tuple[int, str]:
    code = main(["--storage-root", str(storage), "resume", run_id])
    return code, capsys.readouterr().err


def test_unknown_run_id_exits_2_naming_it(instance, tmp_path, capsys):
    code, err = _resume("no-such-run", tmp_path, capsys)
    assert code == 2
    assert err.strip() == "error: no Dagster run with id 'no-such-run' in this instance"


@pytest.mark.parametrize(
    "status",
    [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING],
)
def test_a_run_in_progress_is_refused(instance, tmp_path, capsys, status):
    run = _run(instance, status)
    _checkpoint(tmp_path, run.run_id)
    code, err = _resume(run.run_id, tmp_path, capsys)
    assert code == 2
    assert err.strip() == (
        f"error: run {run.run_id} is {status.value}: still in progress; terminate it first"
    )


def test_a_succeeded_run_has_nothing_to_resume(instance, tmp_path, capsys):
    run = _run(instance, dg.DagsterRunStatus.SUCCESS)
    _checkpoint(tmp_path, run.run_id)
    code, err = _resume(run.run_id, tmp_path, capsys)
    assert code == 2 and err.strip() == f"error: run {run.run_id} succeeded: nothing to resume"


@pytest.mark.parametrize("checkpoint", ["none", "corrupt"])
def test_a_run_without_a_valid_checkpoint_has_nothing_to_resume(
    instance, tmp_path, capsys, checkpoint
):
    run = _run(instance, dg.DagsterRunStatus.CANCELED)
    if checkpoint == "corrupt":
        _checkpoint(tmp_path, run.run_id, valid=False)
    code, err = _resume(run.run_id, tmp_path, capsys)
    where = tmp_path / "runs" / run.run_id / "checkpoints"
    assert code == 2
    # One error line. (The checkpoint manager's loguru warning about the unusable file goes
    # to whatever sink the process has; in a long session that may be another test's.)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith(
        f"error: run {run.run_id} has nothing to resume: no valid checkpoint under {where}"
    )
    if checkpoint == "corrupt":
        assert "size: expected" in errors[0]


def test_the_resume_run_keeps_config_and_partition_and_links_the_runs(instance, tmp_path):
    stopped = _run(
        instance,
        dg.DagsterRunStatus.CANCELED,
        run_config=CONFIG,
        tags={
            "dagster/partition": "trial-1",
            "dagster/from_ui": "true",
            "team": "vision",
            "tinyexp/stalled_run": "older",
        },
    )
    path = _checkpoint(tmp_path, stopped.run_id)
    plan = plan_resume(instance, stopped.run_id, tmp_path)
    assert plan.checkpoint == str(path)
    assert plan.tags == {
        "dagster/partition": "trial-1",
        "team": "vision",
        RESUME_RUN_DIR_TAG: stopped.run_id,
        RESUMED_FROM_RUN_TAG: stopped.run_id,
    }
    # Same config; the training op resumes even though the stopped run said `never`.
    train = plan.run_config["ops"]["mnist__trained_model"]["config"]
    assert train == {"overrides": ["seed=3"], "resume": "auto"}
    assert plan.run_config["ops"]["mnist__prepared_dataset"] == {"config": {}}
    assert CONFIG["ops"]["mnist__trained_model"]["config"]["resume"] == "never"  # not mutated


def test_resuming_a_resume_run_continues_the_first_runs_directory(instance, tmp_path):
    first = _run(instance, dg.DagsterRunStatus.CANCELED)
    second = _run(
        instance,
        dg.DagsterRunStatus.FAILURE,
        tags={RESUME_RUN_DIR_TAG: first.run_id, RESUMED_FROM_RUN_TAG: first.run_id},
    )
    _checkpoint(tmp_path, first.run_id)
    plan = plan_resume(instance, second.run_id, tmp_path)
    assert plan.run_dir_id == first.run_id
    assert plan.tags[RESUME_RUN_DIR_TAG] == first.run_id
    assert plan.tags[RESUMED_FROM_RUN_TAG] == second.run_id
