"""Issue 11, must-show 4: follow docs/your-model.md step by step from an empty folder.

The files come from the page's code blocks (each announced by `<!-- file: PATH -->`) and
the command from its `<!-- run: materialize -->` block, so the page and this test cannot
drift. The project is listed with `dg list defs` and materialized with the page's
`dagster job execute` command, on the session's Ray and Redis; the test then reads the
evaluation's rmse from the Dagster instance.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
from dagster._core.test_utils import instance_for_test

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "your-model.md"
DOC_IMAGES = REPO_ROOT / "docs" / "images"
BLOCK = re.compile(r"<!-- (file|run): (\S+) -->\n```\w*\n(.*?)\n```", re.DOTALL)


def doc_blocks() -> tuple[dict[str, str], dict[str, str]]:
    """(files by path, commands by name) as the page shows them."""
    files, commands = {}, {}
    for kind, name, body in BLOCK.findall(DOC.read_text()):
        (files if kind == "file" else commands)[name] = body + "\n"
    return files, commands


def test_the_page_has_every_step() -> None:
    files, commands = doc_blocks()
    assert set(files) == {
        "pyproject.toml",
        "regressor_project/__init__.py",
        "regressor_project/regressor.py",
        "regressor_project/wine.py",
        "regressor_project/defs/regressor/defs.yaml",
        "regressor_project/defs/wine/defs.yaml",
        "regressor_project/defs/regressor_sweep/defs.yaml",
        "regressor_project/definitions.py",
    }
    assert set(commands) == {"terminal", "materialize", "materialize-wine", "sweep", "compare"}
    assert "tinyexp_dagster.TinyExpPipeline" in files["regressor_project/defs/regressor/defs.yaml"]


def test_follow_the_page_from_an_empty_folder(ray_cluster, redis_url: str, tmp_path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    assert not any(project.iterdir())
    files, commands = doc_blocks()
    for relative, body in files.items():
        path = project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)

    bin_dir = Path(sys.executable).parent
    with instance_for_test() as instance:
        (Path(instance.root_directory) / "dagster.yaml").open("a").write(
            "\ntelemetry:\n  enabled: false\n"
        )
        env = {
            **os.environ,
            "DAGSTER_HOME": instance.root_directory,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "VIRTUAL_ENV": str(bin_dir.parent),
            "PYTHONPATH": os.pathsep.join([str(project), str(REPO_ROOT)]),
            "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
            "TINYEXP_STORAGE_ROOT": str(tmp_path / "storage"),
            "TINYEXP_REDIS_URL": redis_url,
            "TINYEXP_CPUS_PER_WORKER": "0.5",
        }

        # Step 4: what the project declares.
        dg_cli = shutil.which("dg", path=str(bin_dir))
        assert dg_cli, "dagster-dg-cli (the dev extra) provides `dg`"
        checked = subprocess.run(
            [dg_cli, "check", "defs"], cwd=project, env=env, capture_output=True, text=True
        )
        assert checked.returncode == 0, (checked.stdout + checked.stderr)[-3000:]
        listed = subprocess.run(
            [dg_cli, "list", "defs", "--json"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert listed.returncode == 0, listed.stderr[-3000:]
        defs = json.loads(listed.stdout[listed.stdout.index("{") :])
        assets = ("prepared_dataset", "trained_model", "model_checkpoint", "model_evaluation")
        assert {a["asset_key"] for a in defs["assets"]} == {
            f"{name}/{a}" for name in ("regressor", "wine", "regressor_sweep") for a in assets
        } | {"regressor_sweep/sweep_leaderboard"}
        jobs = {j["name"] for j in defs["jobs"]}
        assert {"regressor_training_pipeline", "wine_training_pipeline"} <= jobs

        # Step 5: materialize, with the page's command.
        _run_printed(commands["materialize"], project, env)

        event = instance.get_latest_materialization_event(
            dg.AssetKey(["regressor", "model_evaluation"])
        )
        assert event is not None and event.asset_materialization is not None
        metadata = event.asset_materialization.metadata
        assert metadata["primary_metric"].value == "rmse (min)"
        rmse = metadata["rmse"].value
        assert math.isfinite(rmse) and 0 < rmse <= 100.0, rmse
        trained = instance.get_latest_materialization_event(
            dg.AssetKey(["regressor", "trained_model"])
        ).asset_materialization.metadata
        assert trained["effective_config"].value["train_cfg"]["num_epochs"] == 5  # defs.yaml

        # The classifier, with the default two Ray workers.
        _run_printed(commands["materialize-wine"], project, env)
        _check_wine(instance)

        # Step 6: the sweep, from the terminal.
        swept = _run_printed(commands["sweep"], project, env)
        _check_sweep(instance, swept.stdout)
        compared = _run_printed(commands["compare"], project, env)
        assert "lr=0.001" in compared.stdout and "lr=0.01" in compared.stdout
        picture = project / "curves.png"
        assert picture.read_bytes()[:4] == b"\x89PNG"
        shutil.copyfile(picture, DOC_IMAGES / "sweep-compare.png")  # the page shows this run's


def _check_sweep(instance: dg.DagsterInstance, printed: str) -> None:
    """Both trials trained and recorded in the instance; the leaderboard printed them."""
    key = dg.AssetKey(["regressor_sweep", "trained_model"])
    trials = {"lr=0.001", "lr=0.01"}
    for trial in trials:
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[trial]), limit=1
        ).records
        assert found, f"trial {trial} was not materialized"
        metadata = found[0].event_log_entry.asset_materialization.metadata
        assert metadata["sweep_status"].value == "finished", metadata["sweep_status"]
        assert trial in printed, printed[-3000:]


def _run_printed(command: str, project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """One of the page's `<!-- run: ... -->` commands, as a user types it; it must succeed."""
    done = subprocess.run(
        ["bash", "-c", command], cwd=project, env=env, capture_output=True, text=True, timeout=540
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def _check_wine(instance: dg.DagsterInstance) -> None:
    """The classification variant's dataset, training and evaluation metadata."""

    def metadata(asset: str) -> dict:
        event = instance.get_latest_materialization_event(dg.AssetKey(["wine", asset]))
        assert event is not None and event.asset_materialization is not None, asset
        return event.asset_materialization.metadata

    dataset = metadata("prepared_dataset")
    assert dataset["num_classes"].value == 3
    histogram = dataset["class_histogram"].value  # a table: one row per class
    assert [row.data["class"] for row in histogram.records] == [0, 1, 2]
    assert sum(row.data["train"] for row in histogram.records) > 0
    assert metadata("trained_model")["workers"].value == 2
    evaluation = metadata("model_evaluation")
    assert evaluation["primary_metric"].value == "accuracy (max)"
    assert 0.8 <= evaluation["accuracy"].value <= 1.0  # the blocking check's threshold
    assert len(evaluation["per_class"].value.records) == 3
    assert "confusion_matrix" in evaluation
