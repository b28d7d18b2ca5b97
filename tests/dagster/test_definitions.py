"""`defs` loads, every job resolves to its asset selection, every asset and check is
described and versioned, and loading the definitions stays light (no torch, no Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from tinyexp_dagster.definitions import defs

REPO_ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ["prepared_dataset", "trained_model", "model_checkpoint", "model_evaluation"]
CHECKS = {
    "dataset_sanity": "prepared_dataset",
    "checkpoint_integrity": "model_checkpoint",
    "champion_gate": "model_checkpoint",
    "minimum_metric": "model_evaluation",
}


def key(asset: str) -> dg.AssetKey:
    return dg.AssetKey(["mnist", asset])


HEAVY_MODULES = ["torch", "ray", "torchvision", "sklearn", "pandas", "matplotlib"]


def test_defs_is_loadable() -> None:
    assert isinstance(defs, dg.Definitions)
    dg.Definitions.validate_loadable(defs)
    assert {"ray", "redis", "storage"} <= set(defs.resources)


@pytest.mark.parametrize(
    ("job", "assets"),
    [
        ("mnist_training_pipeline", PIPELINE),
        ("mnist_retrain_job", PIPELINE[1:]),
        ("mnist_evaluate_job", ["model_evaluation"]),
    ],
)
def test_job_resolves_to_its_selection(job: str, assets: list[str]) -> None:
    job_def = defs.resolve_job_def(job)
    assert job_def.description
    layer = job_def.asset_layer
    assert {k.to_user_string() for k in layer.executable_asset_keys} == {
        f"mnist/{a}" for a in assets
    }
    checks = {k.name for k in layer.asset_graph.asset_check_keys}
    assert checks == {name for name, asset in CHECKS.items() if asset in assets}
    assert job_def.tags["tinyexp/pipeline"] == "mnist"


def test_every_asset_is_described_and_versioned() -> None:
    specs = {spec.key.path[-1]: spec for spec in defs.resolve_all_asset_specs()}
    assert set(specs) == set(PIPELINE)
    for name, spec in specs.items():
        assert spec.description and "\n" not in spec.description.strip(), name
        assert spec.code_version, name
        assert spec.group_name == "mnist", name
    graph = defs.resolve_asset_graph()
    assert list(graph.get(key("model_evaluation")).parent_keys) == [key("model_checkpoint")]
    assert {k.name: k.asset_key.path[-1] for k in graph.asset_check_keys} == CHECKS
    for check_key in graph.asset_check_keys:
        spec = graph.get_check_spec(check_key)
        assert spec.description and spec.blocking, check_key


def test_loading_definitions_is_light(tmp_path: Path) -> None:
    """A fresh interpreter loads `defs`, resolves every job, and imports no heavy module;
    resources follow the environment."""
    script = textwrap.dedent(
        f"""
        import json, sys, time
        import dagster
        start = time.perf_counter()
        from tinyexp_dagster.definitions import defs
        for job in ("mnist_training_pipeline", "mnist_retrain_job", "mnist_evaluate_job"):
            defs.resolve_job_def(job)
        defs.resolve_asset_graph()
        print(json.dumps({{
            "seconds": time.perf_counter() - start,
            "heavy": [m for m in {HEAVY_MODULES!r} if m in sys.modules],
            "storage_root": defs.resources["storage"].root,
            "ray_address": defs.resources["ray"].address,
            "num_workers": defs.resources["ray"].num_workers,
        }}))
        """
    )
    env = {
        **os.environ,
        "TINYEXP_STORAGE_ROOT": str(tmp_path),
        "RAY_ADDRESS": "ray://10.0.0.1:10001",
        "TINYEXP_NUM_WORKERS": "3",
    }
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["seconds"] < 5.0, report
    assert report["storage_root"] == str(tmp_path)
    assert report["ray_address"] == "ray://10.0.0.1:10001"
    assert report["num_workers"] == 3


def test_workspace_yaml_loads(tmp_path: Path) -> None:
    """`dagster dev -w workspace.yaml` loads the same code location."""
    dagster = Path(sys.executable).with_name("dagster")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    out = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env={**os.environ, "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful for code location tinyexp_dagster.definitions" in (
        out.stdout + out.stderr
    )
