"""Issue 11, must-show 5: the project's own code location declares the `mnist` pipeline
through the `TinyExpPipeline` component (tinyexp_dagster/defs/mnist/defs.yaml); `dg list
defs` and a Python load of the component list its assets, checks, jobs and triggers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_dagster import TinyExpPipeline, default_resources, pipeline_defs

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = {
    "mnist/prepared_dataset",
    "mnist/trained_model",
    "mnist/model_checkpoint",
    "mnist/model_evaluation",
}
CHECKS = {
    ("mnist/prepared_dataset", "dataset_sanity"),
    ("mnist/model_checkpoint", "checkpoint_integrity"),
    ("mnist/model_checkpoint", "champion_gate"),
    ("mnist/model_evaluation", "minimum_metric"),
}
JOBS = {"mnist_training_pipeline", "mnist_retrain_job", "mnist_evaluate_job"}
SENSORS = {
    "mnist_retrain_on_new_data_sensor",
    "mnist_metric_regression_sensor",
    "training_progress_sensor",
    "stalled_training_sensor",
}
SCHEDULES = {"mnist_retrain_schedule"}


def test_python_load_of_the_component() -> None:
    tree = dg.ComponentTree.for_project(REPO_ROOT)
    component = tree.load_component("mnist")
    defs = dg.Definitions.merge(
        tree.build_defs_at_path("mnist"), dg.Definitions(resources=default_resources())
    )
    assert isinstance(component, TinyExpPipeline)
    assert component.name == "mnist" and component.metric_threshold == 0.9
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == ASSETS
    assert {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys} == CHECKS
    assert {j.name for j in defs.resolve_all_job_defs()} >= JOBS
    assert {s.name for s in defs.sensors} == SENSORS
    assert {s.name for s in defs.schedules} == SCHEDULES
    for sensor in defs.sensors:
        assert sensor.description, sensor.name
    assert defs.resolve_schedule_def("mnist_retrain_schedule").default_status == (
        dg.DefaultScheduleStatus.STOPPED
    )


def test_component_from_attributes_equals_pipeline_defs() -> None:
    attributes = {
        "name": "tabular",
        "experiment": "tinyexp_core.examples.tabular_exp:Exp",
        "overrides": ["train_cfg.num_epochs=2"],
        "metric_threshold": 60.0,
        "retrain_cron": "0 3 * * *",
        "retrain_timezone": "Europe/Paris",
        "champion_tolerance": 2.5,
    }
    component = TinyExpPipeline.from_attributes_dict(attributes=attributes)
    defs = dg.Definitions.merge(
        component.build_defs(None), dg.Definitions(resources=default_resources())
    )
    schedule = defs.resolve_schedule_def("tabular_retrain_schedule")
    assert schedule.cron_schedule == "0 3 * * *"
    assert schedule.execution_timezone == "Europe/Paris"
    sensor = defs.resolve_sensor_def("tabular_metric_regression_sensor")
    assert "rmse" in sensor.description and "<= 60" in sensor.description
    gate = defs.get_asset_checks_def(
        dg.AssetCheckKey(dg.AssetKey(["tabular", "model_checkpoint"]), "champion_gate")
    )
    assert "within 2.5" in gate.get_spec_for_check_key(next(iter(gate.check_keys))).description


def test_dg_list_defs_lists_the_mnist_pipeline(tmp_path: Path) -> None:
    dg_cli = shutil.which("dg", path=str(Path(sys.executable).parent))
    assert dg_cli, "dagster-dg-cli (the dev extra) provides `dg`"
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "PYTHONPATH": str(REPO_ROOT),
        "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
    }
    out = subprocess.run(
        [dg_cli, "list", "defs", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    listed = json.loads(out[out.index("{") :])
    assert {a["asset_key"] for a in listed["assets"]} == ASSETS
    assert {a["group_name"] for a in listed["assets"]} == {"mnist"}
    assert {(c["asset_key"], c["name"]) for c in listed["asset_checks"]} == CHECKS
    assert {j["name"] for j in listed["jobs"]} >= JOBS
    assert {s["name"] for s in listed["sensors"]} == SENSORS
    assert {s["name"] for s in listed["schedules"]} == SCHEDULES


def test_missing_pieces_are_one_line_at_definition_time() -> None:
    from tinyexp_core.config.experiment import TinyExp

    class NoTrain(TinyExp):
        pass

    with pytest.raises(ConfigValueError, match="implementing train\\(\\) or run\\(\\)"):
        pipeline_defs("bare", NoTrain)
    with pytest.raises(ConfigValueError, match="name"):
        pipeline_defs("bad name", "tinyexp_core.examples.tabular_exp:Exp")
