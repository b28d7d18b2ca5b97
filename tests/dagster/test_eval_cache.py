"""A registered version's evaluation is kept beside it and read back on the next run with
the same data, split, experiment, overrides and experiment source; anything else, a file
that is not a result, an unregistered file or an object-store path scores again."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from tinyexp_core.config.exceptions import CheckpointCorruptError
from tinyexp_core.contract import EvalResult, PrimaryMetric
from tinyexp_core.registry import ModelVersion
from tinyexp_dagster.eval_cache import CACHE_DIR, _source_digest, cache_path, cached_evaluation

EXPERIMENT = "tinyexp_core.examples.tabular_exp:Exp"


@pytest.fixture
def version(tmp_path: Path) -> ModelVersion:
    directory = tmp_path / "models" / "m" / "v1"
    directory.mkdir(parents=True)
    model = directory / "model.pt"
    model.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    Path(f"{model}.sha256").write_text(json.dumps({"sha256": sha, "size": 7}))
    (directory / "version.json").write_text("{}")
    return ModelVersion(
        name="m",
        version="v1",
        path=str(model),
        sha256=sha,
        primary_metric=PrimaryMetric("accuracy", "max"),
        experiment=EXPERIMENT,
        overrides=("train_cfg.num_epochs=2",),
        dataset_path=str(tmp_path / "datasets" / "d" / "1234"),
    )


def _scorer(calls: list[str], value: float = 0.9):
    def evaluate() -> EvalResult:
        calls.append("scored")
        metric = PrimaryMetric("accuracy", "max")
        return EvalResult("model.pt", "val", metric, {"accuracy": value}, 0.3, 10)

    return evaluate


def test_second_score_is_read_back_equal(version: ModelVersion) -> None:
    calls: list[str] = []
    first, cached = cached_evaluation(version, "val", _scorer(calls))
    assert not cached and calls == ["scored"]
    again, cached = cached_evaluation(version, "val", _scorer(calls, value=0.1))
    assert cached and calls == ["scored"]
    assert again.to_dict() == first.to_dict()
    (kept,) = (Path(version.path).parent / CACHE_DIR).iterdir()
    assert kept.name.startswith("val-")


def test_a_damaged_version_is_never_scored_from_the_cache(version: ModelVersion) -> None:
    calls: list[str] = []
    cached_evaluation(version, "val", _scorer(calls))
    Path(version.path).write_bytes(b"WEIGHTS")  # same size, other bytes
    with pytest.raises(CheckpointCorruptError, match="sha256"):
        cached_evaluation(version, "val", _scorer(calls))
    assert calls == ["scored"]


@pytest.mark.parametrize(
    "change",
    [
        {"dataset_path": "/elsewhere"},
        {"overrides": ("train_cfg.num_epochs=3",)},
        {"sha256": "cd" * 32},
        {"experiment": "tinyexp_core.examples.mnist_exp:Exp"},
    ],
)
def test_other_data_overrides_weights_or_experiment_score_again(
    version: ModelVersion, change
) -> None:
    calls: list[str] = []
    cached_evaluation(version, "val", _scorer(calls))
    assert cached_evaluation(replace(version, **change), "val", _scorer(calls))[1] is False
    assert cached_evaluation(version, "test", _scorer(calls))[1] is False  # another split
    assert calls == ["scored"] * 3


def test_an_unreadable_cache_file_is_scored_again_and_replaced(version: ModelVersion) -> None:
    calls: list[str] = []
    path = cache_path(version, "val")
    path.parent.mkdir()
    for bad in ("not json", json.dumps({"split": "val"})):  # garbage; not an EvalResult
        path.write_text(bad)
        result, cached = cached_evaluation(version, "val", _scorer(calls))
        assert not cached and json.loads(path.read_text()) == result.to_dict()
    assert len(calls) == 2


def test_not_cached_off_the_registry_on_object_storage_or_unknown_source(version) -> None:
    assert cache_path(replace(version, path="s3://bucket/models/m/v1/model.pt"), "val") is None
    assert cache_path(replace(version, experiment="no_such_module:Exp"), "val") is None
    assert cache_path(replace(version, sha256=""), "val") is None
    Path(version.path).with_name("version.json").unlink()  # not a registered version
    assert cache_path(version, "val") is None
    calls: list[str] = []
    cached_evaluation(version, "val", _scorer(calls))
    cached_evaluation(version, "val", _scorer(calls))
    assert calls == ["scored", "scored"]


def test_the_key_is_the_one_kept_when_versions_were_dicts(version: ModelVersion) -> None:
    """Results kept by a release that keyed a version's dict are found by its ModelVersion."""
    key = {
        "sha256": version.sha256,
        "dataset_path": version.dataset_path,
        "split": "val",
        "experiment": EXPERIMENT,
        "overrides": ["train_cfg.num_epochs=2"],
        "source": _source_digest(EXPERIMENT),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    expected = Path(version.path).parent / CACHE_DIR / f"val-{digest[:20]}.json"
    assert cache_path(version, "val") == expected


def _entry(version: ModelVersion, value: float, **changes: str) -> dict:
    metric = PrimaryMetric("accuracy", "max")
    result = EvalResult("runs/r/best.pt", "val", metric, {"accuracy": value}, 0.3, 10)
    entry = {"sha256": version.sha256, "dataset_path": version.dataset_path}
    return {**entry, **changes, "result": result.to_dict()}


def test_rank0_scores_are_kept_only_for_the_same_bytes_and_data(version: ModelVersion) -> None:
    from tinyexp_dagster.eval_cache import seed

    evaluations = {
        "val": _entry(version, 0.7),
        "test": _entry(version, 0.6, sha256="0" * 64),  # other bytes: not these weights
        "train": _entry(version, 0.5, dataset_path="/elsewhere"),  # other data
    }
    assert seed(version, evaluations) == ["val"]
    calls: list[str] = []
    kept, cached = cached_evaluation(version, "val", _scorer(calls))
    assert cached and not calls and kept.value == 0.7
    assert kept.checkpoint == version.path, "the registered file, not the run's copy"
    for split in ("test", "train"):
        assert not cached_evaluation(version, split, _scorer(calls))[1]
    # A result already kept stays: seeding never replaces one.
    assert seed(version, {"val": _entry(version, 0.1)}) == ["val"]
    assert cached_evaluation(version, "val", _scorer(calls))[0].value == 0.7
    # Off the registry (no version.json) nothing is kept.
    (Path(version.path).parent / "version.json").unlink()
    assert seed(version, {"val": _entry(version, 0.7)}) == []
