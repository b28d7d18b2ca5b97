"""`gate()` without training: a min-direction metric (rmse), the tolerance's edge, a damaged
newcomer, and every move in the history; scores come from the versions' recorded values
(the path of an experiment without `evaluate()`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dagster.support import flipped_byte
from tinyexp_core.checkpoint import save_checkpoint
from tinyexp_core.contract import PrimaryMetric
from tinyexp_core.registry import ModelRegistry, ModelVersion
from tinyexp_dagster.assets.champion import gate
from tinyexp_dagster.resources import StorageResource

RMSE = PrimaryMetric("rmse", "min")


def register(storage: StorageResource, version: str, rmse: float) -> ModelVersion:
    """A registered version whose recorded validation rmse is `rmse`."""
    registry = ModelRegistry(storage.models_dir(), "reg")
    path = registry.version_dir(version) / "model.pt"
    sha = save_checkpoint({"format": 1, "model": {"w": version}}, path)
    record = ModelVersion("reg", version, str(path), sha, RMSE, rmse, created=version)
    return registry.write_version(record)


def recorded(record: ModelVersion) -> float:
    assert record.val_value is not None
    return record.val_value


@pytest.fixture
def storage(tmp_path: Path) -> StorageResource:
    return StorageResource(root=str(tmp_path))


def test_gate_in_a_min_metric_with_tolerance(storage: StorageResource) -> None:
    registry = ModelRegistry(storage.models_dir(), "reg")
    first = gate(storage, register(storage, "v1", 50.0), recorded, 2.0, "test")
    assert first.passed and registry.champion_version() == "v1"
    # 51.5 is worse than 50 but within the tolerance of 2: it becomes champion
    within = gate(storage, register(storage, "v2", 51.5), recorded, 2.0, "test")
    assert within.passed and registry.champion_version() == "v2"
    assert within.metadata["gap"].value == pytest.approx(-1.5)
    # 54 is 2.5 worse than 51.5: refused, registered, the gap in the metric's direction
    worse = gate(storage, register(storage, "v3", 54.0), recorded, 2.0, "test")
    assert not worse.passed and registry.champion_version() == "v2"
    assert worse.metadata["gap"].value == pytest.approx(-2.5)
    assert "worse by 2.5000, tolerance 2" in worse.description
    assert registry.version("v3").val_value == 54.0
    assert [m["version"] for m in registry.history()] == ["v1", "v2"]
    assert all(m["moved_by"] == "test" for m in registry.history())


def test_a_damaged_newcomer_never_becomes_champion(storage: StorageResource) -> None:
    registry = ModelRegistry(storage.models_dir(), "reg")
    gate(storage, register(storage, "v1", 50.0), recorded, 0.0, "test")
    better = register(storage, "v2", 10.0)
    with flipped_byte(better.path):
        result = gate(storage, better, recorded, 0.0, "test")
    assert not result.passed and "not compared, champion unchanged" in result.description
    assert registry.champion_version() == "v1"
    again = gate(storage, better, recorded, 0.0, "test")  # the restored file
    assert again.passed and registry.champion_version() == "v2"
    assert gate(storage, better, recorded, 0.0, "test").description == "v2 is the champion already"
