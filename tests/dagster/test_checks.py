"""Each asset check passing and failing: `dataset_sanity`, `checkpoint_integrity` (blocking
`@asset_check`s that re-read the files) and `minimum_accuracy` (a blocking check spec of
`model_evaluation`), called directly and evaluated by Dagster."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.test_utils import instance_for_test

from tests.dagster.support import (
    ASSET_CHECKS,
    ASSETS,
    Pipeline,
    dagster_resources,
    error_chain,
    flipped_byte,
    key,
    materializations,
    step_failures,
)
from tinyexp_dagster.assets.checks import checkpoint_integrity, dataset_sanity

INTEGRITY = dg.AssetCheckKey(dg.AssetKey(["mnist", "model_checkpoint"]), "checkpoint_integrity")


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


# ---------------------------------------------------------------- dataset_sanity


@pytest.fixture
def dataset_copy(pipeline: Pipeline, tmp_path: Path) -> dict[str, Any]:
    """A private copy of the pipeline's prepared dataset, as the check's input."""
    target = tmp_path / "dataset"
    shutil.copytree(pipeline.latest("prepared_dataset").metadata["dataset_path"].value, target)
    return {"path": str(target)}


def test_dataset_sanity_passes_on_the_prepared_dataset(dataset_copy: dict[str, Any]) -> None:
    result = dataset_sanity(dataset_copy)
    assert result.passed, result.description
    assert result.severity == dg.AssetCheckSeverity.ERROR
    counts = result.metadata["counts"].value
    assert sorted(counts) == ["test", "train", "val"] and min(counts.values()) > 0


def test_dataset_sanity_of_uint8_images_loads_no_tensor(dataset_copy: dict[str, Any]) -> None:
    """Prepared images are uint8 (no NaN possible): the check hashes the files and reads the
    manifest, without torch, in a process that never imported it."""
    import subprocess
    import sys

    from tinyexp_core.data import FORMAT

    manifest = json.loads((Path(dataset_copy["path"]) / "manifest.json").read_text())
    assert manifest["format"] == FORMAT == "tinyexp.prepared/1"
    code = (
        "import sys; from tinyexp_dagster.assets.checks import dataset_sanity; "
        f"r = dataset_sanity({dataset_copy!r}); print(r.passed, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_dataset_sanity_fails_on_a_tampered_split(dataset_copy: dict[str, Any]) -> None:
    with flipped_byte(Path(dataset_copy["path"]) / "val.pt"):
        result = dataset_sanity(dataset_copy)
    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert "val.pt" in result.description and "sha256" in result.description


def test_dataset_sanity_fails_on_an_empty_class(dataset_copy: dict[str, Any]) -> None:
    manifest_file = Path(dataset_copy["path"]) / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["class_histogram"]["train"][3] = 0
    manifest_file.write_text(json.dumps(manifest))
    result = dataset_sanity(dataset_copy)
    assert not result.passed
    assert "classes with no training sample: [3]" in result.description


def test_dataset_sanity_fails_on_a_missing_dataset(tmp_path: Path) -> None:
    result = dataset_sanity({"path": str(tmp_path / "nowhere")})
    assert not result.passed and "manifest.json" in result.description


def test_dataset_sanity_blocks_training(redis_url: str, tmp_path: Path) -> None:
    """Through Dagster: a split damaged on disk (same size, so prepared_dataset reuses it)
    fails the blocking check, and trained_model is never started."""
    resources = dagster_resources(tmp_path / "storage", redis_url)
    assets = [*ASSETS, *ASSET_CHECKS]
    with instance_for_test() as instance:
        first = dg.materialize(
            assets, selection=[key("prepared_dataset")], instance=instance, resources=resources
        )
        assert check_evaluations(first)["dataset_sanity"].passed
        dataset = Path(first.asset_value(key("prepared_dataset"))["path"])
        with flipped_byte(dataset / "train.pt"):
            second = dg.materialize(
                assets,
                selection=[key("prepared_dataset"), key("trained_model")],
                instance=instance,
                resources=resources,
                run_config={"ops": {"mnist__trained_model": {"config": {"overrides": ["x.y=1"]}}}},
                raise_on_error=False,
            )
    evaluation = check_evaluations(second)["dataset_sanity"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "train.pt" in evaluation.description
    assert not second.success
    # Blocked: had trained_model started, its bad override would have failed it instead.
    started = {e.step_key for e in second.all_events if e.is_step_start}
    assert "mnist__trained_model" not in started
    assert not step_failures(second, "trained_model")
    assert len(step_failures(second, "mnist__prepared_dataset_dataset_sanity")) == 1


# ---------------------------------------------------------------- checkpoint_integrity


@pytest.fixture
def checkpoint_copy(pipeline: Pipeline, tmp_path: Path) -> dict[str, Any]:
    """A private copy of the promoted checkpoint and its sidecar, as the check's input."""
    metadata = pipeline.latest("model_checkpoint").metadata
    source = Path(metadata["model_path"].value)
    target = tmp_path / "model.pt"
    shutil.copyfile(source, target)
    shutil.copyfile(f"{source}.sha256", f"{target}.sha256")
    return {"path": str(target), "sha256": metadata["sha256"].value}


def test_checkpoint_integrity_passes_on_the_promoted_checkpoint(
    checkpoint_copy: dict[str, Any],
) -> None:
    result = checkpoint_integrity(checkpoint_copy)
    assert result.passed, result.description
    assert result.metadata["epoch"].value == 0  # the only epoch of the tiny config


def test_checkpoint_integrity_fails_after_a_flipped_byte(checkpoint_copy: dict[str, Any]) -> None:
    with flipped_byte(checkpoint_copy["path"]):
        result = checkpoint_integrity(checkpoint_copy)
    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert "is corrupt: sha256" in result.description


def test_checkpoint_integrity_fails_when_the_sha_differs_from_promotion(
    checkpoint_copy: dict[str, Any],
) -> None:
    """A file swapped together with its sidecar still differs from the recorded sha256."""
    result = checkpoint_integrity({**checkpoint_copy, "sha256": "0" * 64})
    assert not result.passed
    assert "sha256 differs from the one recorded at promotion" in result.description


def test_checkpoint_integrity_fails_on_a_missing_file(checkpoint_copy: dict[str, Any]) -> None:
    Path(checkpoint_copy["path"]).unlink()
    result = checkpoint_integrity(checkpoint_copy)
    assert not result.passed and checkpoint_copy["path"] in result.description


def test_checkpoint_integrity_through_dagster(pipeline: Pipeline) -> None:
    """The check alone, re-run by Dagster on the promoted file: passes, then fails on a
    flipped byte (the file is restored afterwards)."""
    selection = dg.AssetSelection.checks(INTEGRITY)
    passed = pipeline.materialize(selection)
    assert check_evaluations(passed)["checkpoint_integrity"].passed
    assert not passed.get_asset_materialization_events()  # checks only, nothing re-promoted

    with flipped_byte(pipeline.latest("model_checkpoint").metadata["model_path"].value):
        failed = pipeline.materialize(selection, raise_on_error=False)
    evaluation = check_evaluations(failed)["checkpoint_integrity"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "is corrupt: sha256" in evaluation.description


# ---------------------------------------------------------------- minimum_metric


def test_minimum_metric_passes(pipeline: Pipeline) -> None:
    result = pipeline.materialize(["model_evaluation"], model_evaluation={"threshold": 0.5})
    assert result.success
    evaluation = check_evaluations(result)["minimum_metric"]
    assert evaluation.passed
    accuracy = materializations(result)["model_evaluation"].metadata["accuracy"].value
    assert evaluation.metadata["accuracy"].value == accuracy >= 0.5
    assert ">= threshold 0.5000" in evaluation.description


def test_minimum_metric_fails_and_blocks(pipeline: Pipeline) -> None:
    """Below the threshold: the check fails with ERROR severity and, being blocking, fails
    the step and the run (Dagster 1.13 has recorded the materialization by then)."""
    result = pipeline.materialize(
        ["model_evaluation"], raise_on_error=False, model_evaluation={"threshold": 0.999}
    )
    evaluation = check_evaluations(result)["minimum_metric"]
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "not >= threshold 0.9990" in evaluation.description
    assert evaluation.metadata["threshold"].value == 0.999
    assert not result.success
    (failure,) = step_failures(result, "model_evaluation")
    errors = error_chain(failure)
    assert "DagsterAssetCheckFailedError" in errors and "minimum_metric" in errors, errors
