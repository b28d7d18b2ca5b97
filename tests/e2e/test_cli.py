"""The CLI path: `dagster job execute` and `dagster asset materialize` in subprocesses,
against a temporary DAGSTER_HOME, as a user runs them; bad config fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import E2EDeployment
from tests.e2e.helpers import dagster_cmd, run_cli, run_failure_report

pytestmark = pytest.mark.e2e

MODULE = "tinyexp_dagster.definitions"
PIPELINE = ["prepared_dataset", "trained_model", "model_checkpoint", "model_evaluation"]
QUICK = {"ops": {"mnist__trained_model": {"config": {"overrides": ["train_cfg.num_epochs=1"]}}}}


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _output_tail(result, chars: int = 6000) -> str:
    return f"exit status {result.returncode}; output tail:\n{result.stdout[-chars:]}"


def _assert_pipeline_run(instance, run_id: str) -> None:
    """The run succeeded and is the latest materialization of each of the four assets."""
    import dagster as dg

    run = instance.get_run_by_id(run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS, run_failure_report(instance, run_id)
    for asset in PIPELINE:
        event = instance.get_latest_materialization_event(dg.AssetKey(["mnist", asset]))
        assert event is not None and event.run_id == run_id, (
            f"{asset}'s latest materialization is not from run {run_id}"
        )


@pytest.mark.timeout(600)
def test_job_execute_then_asset_materialize(
    deployment: E2EDeployment, tmp_path: Path, redis_url: str
) -> None:
    """Both CLI commands run the four assets to success; progress reaches Redis."""
    import dagster as dg

    from tinyexp_core.progress import read_run
    from tinyexp_core.services.redis_client import make_client

    quick = _write(tmp_path / "quick.yaml", QUICK)
    job = run_cli(
        dagster_cmd(
            "job", "execute", "-m", MODULE, "-j", "mnist_training_pipeline", "-c", str(quick)
        ),
        deployment.env,
        log_path=deployment.logs / "job-execute.log",
    )
    assert job.returncode == 0, _output_tail(job)
    with deployment.instance() as instance:
        (run,) = instance.get_runs()
        assert run.job_name == "mnist_training_pipeline"
        _assert_pipeline_run(instance, run.run_id)
        trained = instance.get_latest_materialization_event(dg.AssetKey(["mnist", "trained_model"]))
        assert trained.asset_materialization.metadata["epochs"].value == 1
    progress = read_run(make_client(redis_url), run.run_id)
    assert progress.get("status") == "succeeded", f"progress of {run.run_id}: {progress}"
    assert progress.get("world_size") == "2", f"progress of {run.run_id}: {progress}"

    materialize = run_cli(
        dagster_cmd(
            "asset",
            "materialize",
            "-m",
            MODULE,
            "--select",
            "*mnist/model_evaluation",
            "-c",
            str(quick),
        ),
        deployment.env,
        log_path=deployment.logs / "asset-materialize.log",
    )
    assert materialize.returncode == 0, _output_tail(materialize)
    with deployment.instance() as instance:
        runs = instance.get_runs()
        assert len(runs) == 2, [r.job_name for r in runs]
        second = runs[0]  # newest first
        assert set(second.asset_selection or ()) == {dg.AssetKey(["mnist", a]) for a in PIPELINE}
        _assert_pipeline_run(instance, second.run_id)


@pytest.mark.timeout(300)
def test_bad_config_fails_with_the_config_error(deployment: E2EDeployment, tmp_path: Path) -> None:
    """A config field Dagster does not know, and an override key the experiment does not
    know: each exits non-zero and prints what was wrong; the override is rejected before
    any Ray worker starts."""
    import dagster as dg

    unknown_field = _write(
        tmp_path / "unknown_field.yaml",
        {"ops": {"mnist__trained_model": {"config": {"num_epochs": 1}}}},
    )
    result = run_cli(
        dagster_cmd(
            "job",
            "execute",
            "-m",
            MODULE,
            "-j",
            "mnist_training_pipeline",
            "-c",
            str(unknown_field),
        ),
        deployment.env,
        timeout_s=240,
    )
    assert result.returncode != 0, _output_tail(result)
    assert "DagsterInvalidConfigError" in result.stdout, _output_tail(result)
    assert 'unexpected config entry "num_epochs"' in result.stdout, _output_tail(result)

    unknown_key = _write(
        tmp_path / "unknown_key.yaml",
        {"ops": {"mnist__trained_model": {"config": {"overrides": ["train_cfg.num_epoch=1"]}}}},
    )
    result = run_cli(
        dagster_cmd(
            "job", "execute", "-m", MODULE, "-j", "mnist_training_pipeline", "-c", str(unknown_key)
        ),
        deployment.env,
        timeout_s=240,
    )
    assert result.returncode != 0, _output_tail(result)
    assert "invalid configuration" in result.stdout, _output_tail(result)
    assert "train_cfg.num_epoch" in result.stdout, _output_tail(result)
    assert "Ray workers" not in result.stdout, "training started despite the bad override"
    with deployment.instance() as instance:
        (run,) = instance.get_runs()  # the invalid Dagster config never became a run
        assert run.status == dg.DagsterRunStatus.FAILURE
        report = run_failure_report(instance, run.run_id)
        assert "trained_model" in report and "num_epoch" in report, report
