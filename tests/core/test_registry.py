"""The model registry without training: ModelVersion round-trips version.json (records of
earlier releases load, extra keys kept, required ones named), a version is never
overwritten, the alias moves only to a registered version; the old import path works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinyexp_core.config.exceptions import TinyExpError, UnknownModelError
from tinyexp_core.contract import PrimaryMetric
from tinyexp_core.contract.base import ContractError
from tinyexp_core.registry import ModelRegistry, ModelVersion

# A version.json as model_checkpoint writes it (the shape on disk must not change).
WRITTEN = {
    "config_hash": "c0ffee",
    "created": "2026-12-01T10:00:00+00:00",
    "created_by": "dagster run r1 (p/model_checkpoint)",
    "data_version": "d1",
    "dataset_path": "/root/datasets/digits/d1",
    "experiment": "tinyexp_core.examples.mnist_exp:Exp",
    "name": "p",
    "overrides": ["train_cfg.num_epochs=1"],
    "path": "/root/models/p/v1/model.pt",
    "pipeline": "p",
    "primary_metric": {"direction": "max", "name": "accuracy"},
    "sha256": "ab" * 32,
    "source_run": "v1",
    "val_value": 0.93,
    "version": "v1",
}


def record(version: str = "v1", sha: str = "a", created: str = "t0") -> ModelVersion:
    path = f"/m/{version}/model.pt"
    return ModelVersion("m", version, path, sha, PrimaryMetric("accuracy"), 0.5, created=created)


def test_a_written_record_round_trips_to_the_same_json() -> None:
    version = ModelVersion.from_dict(WRITTEN)
    assert version.overrides == ("train_cfg.num_epochs=1",) and version.val_value == 0.93
    assert version.primary_metric == PrimaryMetric("accuracy", "max")
    assert version.to_dict() == WRITTEN
    assert json.dumps(version.to_dict(), sort_keys=True) == json.dumps(WRITTEN, sort_keys=True)


def test_records_of_earlier_or_later_releases_load() -> None:
    required = ("name", "version", "path", "sha256", "primary_metric")
    older = ModelVersion.from_dict({k: WRITTEN[k] for k in required})
    assert older.pipeline == "" and older.overrides == () and older.dataset_path is None
    assert older.val_value is None and older.created == ""
    newer = ModelVersion.from_dict({**WRITTEN, "signed_by": "ci", "tags": ["prod"]})
    assert newer.extra == {"signed_by": "ci", "tags": ["prod"]}
    assert newer.to_dict() == {**WRITTEN, "signed_by": "ci", "tags": ["prod"]}
    assert ModelVersion.from_dict({**WRITTEN, "val_value": None}).val_value is None


@pytest.mark.parametrize("missing", ["name", "version", "path", "sha256", "primary_metric"])
def test_a_record_without_a_required_key_is_named(missing: str) -> None:
    with pytest.raises(ContractError, match=missing):
        ModelVersion.from_dict({k: v for k, v in WRITTEN.items() if k != missing})


def test_registry_reads_what_earlier_releases_wrote(tmp_path: Path) -> None:
    old = {k: v for k, v in WRITTEN.items() if k not in ("pipeline", "created_by")}
    (tmp_path / "p" / "v1").mkdir(parents=True)
    (tmp_path / "p" / "v1" / "version.json").write_text(json.dumps({**old, "note": "x"}))
    (tmp_path / "p" / "broken").mkdir()
    (tmp_path / "p" / "broken" / "version.json").write_text("{}")  # left out of versions()
    registry = ModelRegistry(tmp_path, "p")
    assert [v.version for v in registry.versions()] == ["v1"]
    assert registry.version("v1").extra == {"note": "x"}


def test_registry_never_overwrites_a_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, "m")
    (tmp_path / "m" / "v1").mkdir(parents=True)  # the weights are copied there first
    first = registry.write_version(record(created="t0"))
    again = registry.write_version(record(created="t1"))
    assert again == first and again.created == "t0"  # a retried registration keeps the first
    on_disk = json.loads((tmp_path / "m" / "v1" / "version.json").read_text())
    assert on_disk == first.to_dict() and registry.version("v1") == first
    with pytest.raises(FileExistsError, match="other weights"):
        registry.write_version(record(sha="b"))
    with pytest.raises(UnknownModelError, match="no version 'v2'"):
        registry.move_champion("v2", moved_by="test", reason="x")
    assert registry.champion() is None and registry.history() == []
    registry.move_champion("v1", moved_by="test", reason="first")
    alias = json.loads((tmp_path / "m" / "champion.json").read_text())
    assert alias["version"] == "v1" and alias["moved_by"] == "test" and alias["previous"] is None


def test_versions_are_oldest_first_and_unknown_ones_listed(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, "m")
    for version in ("a", "b"):
        registry.version_dir(version).mkdir(parents=True)
    registry.write_version(record("b", created="t2"))
    registry.write_version(record("a", created="t1"))
    assert [v.version for v in registry.versions()] == ["a", "b"]
    with pytest.raises(UnknownModelError, match=r"versions: a, b"):
        registry.version("c")
    with pytest.raises(UnknownModelError, match="not valid"):
        ModelRegistry(tmp_path, "../x")


def test_unknown_model_error_is_typed_and_not_retryable() -> None:
    assert issubclass(UnknownModelError, (TinyExpError, LookupError))
    assert UnknownModelError.retryable is False


def test_old_import_path_and_no_dagster_torch_or_ray() -> None:
    from tinyexp_dagster import registry as old

    assert old.ModelRegistry is ModelRegistry and old.ModelVersion is ModelVersion
    assert old.UnknownModelError is UnknownModelError
    heavy = "{'dagster', 'torch', 'ray'}"
    code = f"import sys, tinyexp_core.registry; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
