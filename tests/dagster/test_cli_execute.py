"""Must-show 2: `dagster job execute -m tinyexp_dagster.definitions -j mnist_training_pipeline -c`
applies the YAML's overrides; the effective config is in the `trained_model` metadata of the
instance under DAGSTER_HOME. One real subprocess, which starts (and stops) its own Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from tinyexp_core.progress import read_run
from tinyexp_core.services.redis_client import make_client

RUN_CONFIG = {
    "ops": {
        "mnist__trained_model": {
            "config": {"overrides": ["optimizer_cfg.lr=0.002", "train_cfg.num_epochs=1"]}
        },
        # one epoch is ~0.9 accurate; the blocking accuracy check is not what is tested here
        "mnist__model_evaluation": {"config": {"threshold": 0.5}},
    }
}


def test_job_execute_applies_overrides(tmp_path: Path, redis_url: str) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    storage = tmp_path / "storage"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RUN_CONFIG))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TINYEXP_STORAGE_ROOT": str(storage),
        "TINYEXP_REDIS_URL": redis_url,
    }
    env.pop("RAY_ADDRESS", None)  # the job starts its own local Ray
    dagster = Path(sys.executable).with_name("dagster")
    command = [
        str(dagster),
        "job",
        "execute",
        "-m",
        "tinyexp_dagster.definitions",
        "-j",
        "mnist_training_pipeline",
        "-c",
        str(config),
    ]
    out = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.job_name == "mnist_training_pipeline"
        assert run.status == dg.DagsterRunStatus.SUCCESS
        trained = latest(instance, "trained_model")
        evaluation = latest(instance, "model_evaluation")

    effective = trained["effective_config"]
    assert effective["optimizer_cfg"]["lr"] == 0.002
    assert effective["train_cfg"]["num_epochs"] == 1
    assert trained["epochs"] == 1
    assert trained["overrides"] == ["optimizer_cfg.lr=0.002", "train_cfg.num_epochs=1"]
    assert trained["workers"] == 2
    assert Path(trained["run_dir"]) == storage / "runs" / run.run_id
    assert isinstance(evaluation["accuracy"], float) and 0.5 <= evaluation["accuracy"] <= 1.0
    assert read_run(make_client(redis_url), run.run_id)["status"] == "succeeded"


def latest(instance: dg.DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(["mnist", asset]))
    assert event is not None and event.asset_materialization is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}
