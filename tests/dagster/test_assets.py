"""Each asset materialized through `dagster.materialize` on a tiny config, with a real local
Ray (2 DDP workers), a real Redis and a real Dagster instance: outputs on disk, the
metadata promised in DESIGN.md, progress in Redis, and evaluation of the promoted FILE."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from tests.dagster.support import (
    PIPELINE,
    Pipeline,
    error_chain,
    flipped_byte,
    materializations,
    step_failures,
)
from tinyexp_core.checkpoint import sha256_file
from tinyexp_core.progress import read_run
from tinyexp_core.services.redis_client import make_client

SPLITS = ("train", "val", "test")
NUM_CLASSES = 10
DIGITS_SAMPLES = 1797  # scikit-learn's bundled digits


@pytest.fixture(scope="module")
def mats(pipeline: Pipeline) -> dict[str, dg.AssetMaterialization]:
    """The fixture run's materializations, all four of them."""
    assert pipeline.result.success
    found = materializations(pipeline.result)
    assert sorted(found) == sorted(PIPELINE)
    return found


def values(mat: dg.AssetMaterialization) -> dict[str, Any]:
    """Metadata as plain values (tables as lists of row dicts)."""
    out: dict[str, Any] = {}
    for key, entry in mat.metadata.items():
        if isinstance(entry, dg.TableMetadataValue):
            out[key] = [record.data for record in entry.records]
        else:
            out[key] = entry.value
    return out


def data_version(mat: dg.AssetMaterialization) -> str:
    return mat.tags[DATA_VERSION_TAG]


def test_prepared_dataset(mats: dict[str, dg.AssetMaterialization], pipeline: Pipeline) -> None:
    meta = values(mats["prepared_dataset"])
    counts = {split: meta[f"samples_{split}"] for split in SPLITS}
    assert sum(counts.values()) == DIGITS_SAMPLES and min(counts.values()) > 0
    histogram = meta["class_histogram"]
    assert [row["class"] for row in histogram] == list(range(NUM_CLASSES))
    for split in SPLITS:
        assert sum(row[split] for row in histogram) == counts[split]
    assert all(row["train"] > 0 for row in histogram)
    column_types = {
        c.name: c.type for c in mats["prepared_dataset"].metadata["class_histogram"].schema.columns
    }
    assert column_types == {"class": "int", "train": "int", "val": "int", "test": "int"}

    path = Path(meta["dataset_path"])
    assert path.is_relative_to(pipeline.storage_root / "datasets" / "digits")
    assert path.name == meta["data_version"] == data_version(mats["prepared_dataset"])
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["counts"] == counts
    assert meta["sha256"] == {name: sha256_file(path / name) for name in manifest["files"]}
    assert sorted(meta["sha256"]) == ["test.pt", "train.pt", "val.pt"]


def test_trained_model(mats: dict[str, dg.AssetMaterialization], pipeline: Pipeline) -> None:
    meta = values(mats["trained_model"])
    assert meta["epochs"] == 1
    assert meta["workers"] == meta["world_size"] == 2
    assert meta["resumed_from"] == "none"
    assert math.isfinite(meta["final_train_loss"]) and meta["final_train_loss"] > 0
    assert 0.5 < meta["best_val_accuracy"] <= 1.0
    assert meta["samples_per_s"] > 0 and meta["wall_time_s"] > 0
    (row,) = meta["per_epoch"]
    assert row["epoch"] == 1
    assert row["val_accuracy"] == pytest.approx(meta["best_val_accuracy"], abs=1e-5)
    assert row["train_loss"] == pytest.approx(meta["final_train_loss"], abs=1e-5)

    effective = meta["effective_config"]
    assert effective["train_cfg"]["num_epochs"] == 1
    dataset_path = values(mats["prepared_dataset"])["dataset_path"]
    assert effective["data_cfg"]["prepared_path"] == dataset_path
    assert meta["overrides"] == ["train_cfg.num_epochs=1"]
    assert data_version(mats["trained_model"]) == meta["config_hash"]

    run_dir = Path(meta["run_dir"])
    assert run_dir.parent == pipeline.storage_root / "runs"
    assert run_dir.name == pipeline.result.run_id  # the Dagster run names the run directory
    assert meta["best_checkpoint"] == str(run_dir / "checkpoints" / "best.pt")
    for name in ("best.pt", "last.pt"):
        assert (run_dir / "checkpoints" / name).is_file()
    # learning curves: an SVG in the run directory, and each epoch's values as numbers
    curves = Path(meta["learning_curves"])
    assert curves == run_dir / "learning_curves.svg"
    # 1 epoch: dots
    assert curves.read_text().startswith("<svg ") and "<circle" in curves.read_text()
    assert meta["val_accuracy_epoch_001"] == row["val_accuracy"]
    assert meta["train_loss_epoch_001"] == row["train_loss"]
    assert meta["val_loss_epoch_001"] == row["val_loss"]


def test_model_checkpoint(mats: dict[str, dg.AssetMaterialization], pipeline: Pipeline) -> None:
    meta = values(mats["model_checkpoint"])
    trained = values(mats["trained_model"])
    path = Path(meta["model_path"])
    run_id = pipeline.result.run_id
    assert path == pipeline.storage_root / "models" / "mnist" / run_id / "model.pt"
    assert meta["version"] == run_id and meta["model_name"] == "mnist"
    record = json.loads((path.parent / "version.json").read_text())
    assert record["sha256"] == meta["sha256"] and record["config_hash"] == meta["config_hash"]
    assert record["data_version"] == values(mats["prepared_dataset"])["data_version"]
    assert meta["sha256"] == sha256_file(path)
    assert meta["size_bytes"] == path.stat().st_size > 0
    assert meta["source_run"] == run_id
    assert meta["val_accuracy"] == trained["best_val_accuracy"]
    assert meta["config_hash"] == trained["config_hash"]
    # a copy, not a link: the run directory may be cleaned up without losing the model
    assert sha256_file(trained["best_checkpoint"]) == meta["sha256"]
    assert not path.is_symlink()


def test_model_evaluation(mats: dict[str, dg.AssetMaterialization]) -> None:
    meta = values(mats["model_evaluation"])
    num_test = values(mats["prepared_dataset"])["samples_test"]
    assert 0.5 < meta["accuracy"] <= 1.0
    assert math.isfinite(meta["loss"]) and meta["loss"] > 0
    assert meta["num_samples"] == num_test and meta["split"] == "test"
    assert meta["checkpoint"] == values(mats["model_checkpoint"])["model_path"]

    per_class = meta["per_class"]
    assert [row["class"] for row in per_class] == list(range(NUM_CLASSES))
    assert sum(row["support"] for row in per_class) == num_test
    assert all(0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0 for row in per_class)

    matrix = parse_markdown_matrix(meta["confusion_matrix"])
    assert len(matrix) == NUM_CLASSES and all(len(row) == NUM_CLASSES for row in matrix)
    assert sum(map(sum, matrix)) == num_test
    diagonal = sum(matrix[i][i] for i in range(NUM_CLASSES))
    assert diagonal / num_test == pytest.approx(meta["accuracy"])
    assert [sum(row) for row in matrix] == [row["support"] for row in per_class]


def parse_markdown_matrix(text: str) -> list[list[int]]:
    """The integer cells of a markdown table, without its header and index column."""
    rows = [line.strip().strip("|").split("|") for line in text.strip().splitlines()[2:]]
    return [[int(cell) for cell in row[1:]] for row in rows]


def test_asset_checks_passed_in_the_pipeline(pipeline: Pipeline) -> None:
    evaluations = {e.check_name: e for e in pipeline.result.get_asset_check_evaluations()}
    assert sorted(evaluations) == [
        "champion_gate",
        "checkpoint_integrity",
        "dataset_sanity",
        "minimum_metric",
    ]
    assert all(e.passed for e in evaluations.values())
    # rank 0 loaded the best file as training ended: the check hashed the copy, no reload
    integrity = evaluations["checkpoint_integrity"].description
    assert integrity.endswith("(loaded by rank 0 after training)"), integrity


def test_rank0_scores_are_what_the_gate_and_evaluation_read(
    mats: dict[str, dg.AssetMaterialization], pipeline: Pipeline
) -> None:
    """Rank 0 scored the best file on val and test before it exited; the registry kept
    those scores, and model_evaluation's numbers are exactly the kept test score."""
    version_dir = Path(values(mats["model_checkpoint"])["model_path"]).parent
    kept = {
        f.name.split("-")[0]: json.loads(f.read_text())
        for f in (version_dir / "evaluations").iterdir()
    }
    assert sorted(kept) == ["test", "val"]
    meta = values(mats["model_evaluation"])
    assert kept["test"]["metrics"]["accuracy"] == meta["accuracy"]
    assert kept["test"]["checkpoint"] == meta["checkpoint"]
    trained = pipeline.result.asset_value(dg.AssetKey(["mnist", "trained_model"]))
    assert set(trained["evaluations"]) == {"val", "test"}
    assert trained["evaluations"]["test"]["result"]["metrics"] == kept["test"]["metrics"]
    assert trained["evaluations"]["val"]["result"]["loss"] == kept["val"]["loss"]


def test_progress_in_redis(pipeline: Pipeline) -> None:
    """Rank 0 reported under the Dagster run id; the run ended `succeeded`."""
    run = read_run(make_client(pipeline.redis_url), pipeline.result.run_id)
    assert run["status"] == "succeeded"
    assert run["asset"] == "mnist/trained_model"
    assert run["world_size"] == "2"
    assert run["num_epochs"] == "1"
    assert run["last_checkpoint"].startswith(str(pipeline.storage_root / "runs"))


def test_evaluation_reads_the_promoted_file(pipeline: Pipeline) -> None:
    """A damaged promoted file fails evaluation (no stale weights from memory, no 0.0
    accuracy); the restored file gives the last evaluation's accuracy again."""
    path = Path(values(pipeline.latest("model_checkpoint"))["model_path"])
    last_evaluation = values(pipeline.latest("model_evaluation"))
    assert last_evaluation["checkpoint"] == str(path)
    with flipped_byte(path):
        failed = pipeline.materialize(["model_evaluation"], raise_on_error=False)
    assert not failed.success
    (failure,) = step_failures(failed, "model_evaluation")
    errors = error_chain(failure)
    assert f"CheckpointCorruptError: checkpoint {path} is corrupt: sha256" in errors, errors
    assert not failed.get_asset_materialization_events()

    again = pipeline.materialize(["model_evaluation"])
    accuracy = values(materializations(again)["model_evaluation"])["accuracy"]
    assert accuracy == last_evaluation["accuracy"]
