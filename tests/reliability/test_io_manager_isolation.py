"""Item 6: a step reads the upstream value of its own run (or, re-executed, of its parent
run), never whichever run wrote last. Dagster's default filesystem IO manager keeps one file
per asset for every run, so two runs ending together could promote each other's model;
`RunScopedJSONIOManager` keeps each value under the run that produced it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import pytest

import tinyexp_dagster
from tests.reliability.support import (
    ENV_REDIS,
    ENV_STORAGE,
    materialization_metadata,
    train_config,
    training_pipeline_job,
)
from tinyexp_dagster.resources import RunScopedJSONIOManager, StorageResource


def _config(lr: str) -> dict:
    config = train_config(["train_cfg.num_epochs=1", f"optimizer_cfg.lr={lr}"])
    config["ops"]["mnist__model_evaluation"] = {"config": {"threshold": 0.0}}
    return config


def test_a_reexecuted_step_reads_its_own_runs_upstream_value(
    ray_cluster, redis_url, storage, instance, monkeypatch
):
    monkeypatch.setenv(ENV_STORAGE, str(storage))
    monkeypatch.setenv(ENV_REDIS, redis_url)
    job = dg.reconstructable(training_pipeline_job)
    first = dg.execute_job(job, instance, run_config=_config("0.001"))
    second = dg.execute_job(job, instance, run_config=_config("0.002"))
    assert first.success and second.success

    # Promote again from the first run: its trained_model, not the second run's.
    again = dg.execute_job(
        job,
        instance,
        run_config=_config("0.001"),
        reexecution_options=dg.ReexecutionOptions(
            parent_run_id=first.run_id, step_selection=["mnist__model_checkpoint"]
        ),
    )
    assert again.success
    promoted = materialization_metadata(instance, again.run_id, "model_checkpoint")
    assert promoted["source_run"] == first.run_id, (
        f"re-executing run {first.run_id} promoted run {promoted['source_run']}'s model"
    )


# ---------------------------------------------------------------- JSON values (no pickles)


def _json_io(tmp_path: Path) -> dict:
    storage = StorageResource(root=str(tmp_path))
    return {"io_manager": RunScopedJSONIOManager(storage=storage), "storage": storage}


def test_values_are_json_files_per_run_and_latest(tmp_path: Path) -> None:
    @dg.asset
    def upstream() -> dict:
        return {"path": "/data/x", "count": 3, "metric": 0.5, "tags": ["a", "b"]}

    @dg.asset
    def downstream(upstream: dict) -> dict:
        return {"seen": upstream}

    result = dg.materialize([upstream, downstream], resources=_json_io(tmp_path))
    assert result.success
    values = tmp_path / "values" / "upstream"
    stored = json.loads((values / f"{result.run_id}.json").read_text())
    assert stored == {"path": "/data/x", "count": 3, "metric": 0.5, "tags": ["a", "b"]}
    assert json.loads((values / "latest.json").read_text()) == stored
    assert result.output_for_node("downstream") == {"seen": stored}
    assert not list(tmp_path.rglob("*.pickle")) and not list(tmp_path.rglob(".*.tmp-*"))


def test_a_value_that_is_not_json_fails_without_retry(tmp_path: Path) -> None:
    @dg.asset
    def odd() -> dict:
        return {"path": Path("/data/x")}

    with pytest.raises(dg.Failure, match="asset odd returned a value that is not JSON"):
        dg.materialize([odd], resources=_json_io(tmp_path))
    assert not (tmp_path / "values" / "odd").exists()


def test_a_missing_value_names_the_asset(tmp_path: Path) -> None:
    @dg.asset
    def needs(upstream: dict) -> dict:
        return upstream

    upstream_spec = dg.AssetSpec("upstream")
    with pytest.raises(dg.Failure, match="asset upstream has no stored value"):
        dg.materialize([needs, upstream_spec], resources=_json_io(tmp_path), selection=[needs])


def test_no_pickle_load_in_the_dagster_package() -> None:
    package = Path(tinyexp_dagster.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if re.search(r"\bpickle\.loads?\b|\bimport pickle\b|\bcloudpickle\b", path.read_text())
    ]
    assert offenders == []
