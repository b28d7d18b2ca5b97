"""Issue 22, must-show 1: a walkthrough-style `dg` project with two pipeline folders plus one
`pipeline_defs` in Python: `dg list components` knows `tinyexp_dagster.TinyExpPipeline`,
`dg check defs` and `dg list defs` pass and list all three pipelines (the shared sensors
once), and what `dg scaffold defs tinyexp_dagster.TinyExpPipeline <folder>` writes loads.
Two pipelines of one name fail at load with one line naming both declarations.

`dg` only loads definitions here: nothing trains."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from tests.dagster.dg_project import DIGITS, TABULAR, environment, run, write_project
from tinyexp_dagster import default_resources, pipeline_defs
from tinyexp_dagster.sensors import SHARED_SENSORS

ASSETS = ("prepared_dataset", "trained_model", "model_checkpoint", "model_evaluation")
SHARED = {"training_progress_sensor", "stalled_training_sensor"}
# What a load must not print (issue 22: a quiet run).
NOISE = ("does not match", "DAGSTER_IS_DEV_CLI", "BetaWarning", "PreviewWarning", "Traceback")


def listed(project: Path, env: dict[str, str]) -> dict:
    out = run(["dg", "list", "defs", "--json"], project, env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return json.loads(out.stdout[out.stdout.index("{") :])


def checked(project: Path, env: dict[str, str]) -> str:
    out = run(["dg", "check", "defs"], project, env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "All definitions loaded successfully" in text
    assert not [n for n in NOISE if n in text], text[-3000:]
    return text


def error_line(text: str) -> str:
    """The one line that says why the load failed."""
    [line] = [x for x in text.splitlines() if "exceptions.ConfigValueError:" in x]
    return line


def pipelines_of(defs: dict) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for asset in defs["assets"]:
        name, _, rest = asset["asset_key"].partition("/")
        found.setdefault(name, set()).add(rest)
    return found


def test_two_folders_and_python_in_one_dg_project(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "project",
        folders={"regressor": TABULAR, "digits": DIGITS},
        python={"tabular": TABULAR},
    )
    env = environment(project, tmp_path / "dagster_home")

    components = run(["dg", "list", "components", "--json"], project, env)
    assert components.returncode == 0, components.stderr[-3000:]
    types = json.loads(components.stdout[components.stdout.index("{") :])["items"]
    assert "tinyexp_dagster.TinyExpPipeline" in {t["key"] for t in types}

    checked(project, env)
    defs = listed(project, env)
    assert pipelines_of(defs) == {name: set(ASSETS) for name in ("regressor", "digits", "tabular")}
    sensors = [s["name"] for s in defs["sensors"]]
    assert sorted(s for s in sensors if s in SHARED) == sorted(SHARED)  # once each
    jobs = {j["name"] for j in defs["jobs"]}
    assert {"regressor_training_pipeline", "digits_training_pipeline"} <= jobs
    assert "tabular_training_pipeline" in jobs

    # A third folder, scaffolded by dg: its defs.yaml loads as it is written.
    scaffold = ["dg", "scaffold", "defs", "tinyexp_dagster.TinyExpPipeline", "scaffolded"]
    out = run(scaffold, project, env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    written = (project / "team_models" / "defs" / "scaffolded" / "defs.yaml").read_text()
    assert written.startswith("type: tinyexp_dagster.TinyExpPipeline\n")
    checked(project, env)
    assert pipelines_of(listed(project, env))["scaffolded"] == set(ASSETS)


def test_a_folder_and_python_with_one_name(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "project", folders={"a": TABULAR, "b": DIGITS}, python={"b": TABULAR}
    )
    out = run(["dg", "check", "defs"], project, environment(project, tmp_path / "home"))
    assert out.returncode != 0
    line = error_line(out.stdout + out.stderr)
    assert "one pipeline per name" in line and "'b'" in line
    # the folder's file, and the line of definitions.py that calls pipeline_defs("b", ...)
    assert "team_models/defs/b/defs.yaml" in line and "team_models/definitions.py:11" in line


def test_two_folders_with_one_name(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", folders={"a": TABULAR, "b": TABULAR}, python={})
    # the second folder declares the first one's name
    second = project / "team_models" / "defs" / "b" / "defs.yaml"
    second.write_text(second.read_text().replace("name: b", "name: a"))
    out = run(["dg", "check", "defs"], project, environment(project, tmp_path / "home"))
    assert out.returncode != 0
    line = error_line(out.stdout + out.stderr)
    assert "team_models/defs/a/defs.yaml" in line and "team_models/defs/b/defs.yaml" in line


def test_shared_sensors_survive_a_component_metadata_rewrite() -> None:
    """What a component does to its Definitions (its origin in every definition's metadata)
    leaves the shared sensors the same objects, so two components' merge holds them once."""
    first, second = (
        pipeline_defs(name, TABULAR).with_definition_metadata_update(
            lambda metadata, name=name: {**metadata, "origin": name}
        )
        for name in ("one", "two")
    )
    merged = dg.Definitions.merge(first, second, dg.Definitions(resources=default_resources()))
    for sensor in SHARED_SENSORS:
        assert sum(s is sensor for s in merged.sensors) == 2  # the same object twice
    names = [s.name for s in merged.get_repository_def().sensor_defs]
    assert sorted(n for n in names if n in SHARED) == sorted(SHARED)
    assert {"one_retrain_on_new_data_sensor", "two_retrain_on_new_data_sensor"} <= set(names)
