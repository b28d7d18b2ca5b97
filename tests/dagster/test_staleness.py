"""Versioning: `trained_model`'s data version is its config hash and `prepared_dataset`'s the
dataset's content version, so Dagster's stale-status resolver (what the UI shows) marks
downstream assets stale after a config or data change, and fresh again when it is undone."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster._core.definitions.data_version import (
    DATA_VERSION_TAG,
    CachingStaleStatusResolver,
    StaleCauseCategory,
    StaleStatus,
)
from dagster._core.loader import LoadingContextForTest

from tests.dagster.support import PIPELINE, TINY_OVERRIDES, Pipeline, materializations
from tinyexp_dagster.definitions import defs

FRESH, STALE = StaleStatus.FRESH, StaleStatus.STALE


def resolver(pipeline: Pipeline) -> CachingStaleStatusResolver:
    """A fresh resolver (it caches) over the deployed `defs` asset graph."""
    instance = pipeline.instance
    return CachingStaleStatusResolver(
        instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
    )


def statuses(pipeline: Pipeline) -> dict[str, StaleStatus]:
    status = resolver(pipeline)
    return {asset: status.get_status(dg.AssetKey(["mnist", asset])) for asset in PIPELINE}


def version_of(result: dg.ExecuteInProcessResult, asset: str) -> str:
    return materializations(result)[asset].tags[DATA_VERSION_TAG]


def root_cause(pipeline: Pipeline, asset: str) -> tuple[StaleCauseCategory, str]:
    (cause,) = resolver(pipeline).get_stale_root_causes(dg.AssetKey(["mnist", asset]))
    assert cause.dependency is None  # the root is the dependency's own new data version
    return cause.category, cause.key.asset_key.path[-1]


def test_training_config_change_marks_downstream_stale(pipeline: Pipeline) -> None:
    """Dagster 1.13 judges staleness by direct inputs: a new `trained_model` data version
    makes `model_checkpoint` stale, and `model_evaluation` once the checkpoint is re-promoted."""
    assert statuses(pipeline) == dict.fromkeys(PIPELINE, FRESH)
    original = pipeline.latest("trained_model")
    original_version = original.tags[DATA_VERSION_TAG]
    assert original_version == original.metadata["config_hash"].value

    # The same config again: a new training run, the same data version, nothing stale.
    same = materializations(pipeline.materialize(["trained_model"]))["trained_model"]
    assert same.metadata["run_dir"].value != original.metadata["run_dir"].value
    assert same.tags[DATA_VERSION_TAG] == original_version
    assert statuses(pipeline) == dict.fromkeys(PIPELINE, FRESH)

    # (with W&B tracking on too: its offline run directory is linked in the metadata)
    overrides = [*TINY_OVERRIDES, "optimizer_cfg.lr=0.002", "wandb_cfg.enable_wandb=true"]
    changed = pipeline.materialize(["trained_model"], trained_model={"overrides": overrides})
    changed_mat = materializations(changed)["trained_model"]
    assert "wandb_dir" not in original.metadata
    wandb_dir = Path(changed_mat.metadata["wandb_dir"].value)
    assert wandb_dir.parent == Path(changed_mat.metadata["run_dir"].value) / "wandb"
    assert wandb_dir.is_dir() and any(wandb_dir.glob("run-*.wandb"))
    assert changed_mat.tags[DATA_VERSION_TAG] == changed_mat.metadata["config_hash"].value
    assert changed_mat.tags[DATA_VERSION_TAG] != original_version
    assert statuses(pipeline) == {
        "prepared_dataset": FRESH,
        "trained_model": FRESH,
        "model_checkpoint": STALE,
        "model_evaluation": FRESH,
    }
    assert root_cause(pipeline, "model_checkpoint") == (StaleCauseCategory.DATA, "trained_model")

    pipeline.materialize(["model_checkpoint"])
    assert statuses(pipeline)["model_evaluation"] == STALE
    assert root_cause(pipeline, "model_evaluation") == (
        StaleCauseCategory.DATA,
        "model_checkpoint",
    )

    # Evaluating the new checkpoint leaves the session's pipeline consistent and fresh.
    pipeline.materialize(["model_evaluation"])
    assert statuses(pipeline) == dict.fromkeys(PIPELINE, FRESH)


def test_dataset_change_gives_a_new_data_version(pipeline: Pipeline) -> None:
    original = pipeline.latest("prepared_dataset")
    original_version = original.tags[DATA_VERSION_TAG]
    assert original_version == original.metadata["data_version"].value

    changed = pipeline.materialize(
        ["prepared_dataset"],
        prepared_dataset={"overrides": ["data_cfg.test_fraction=0.25"]},
    )
    changed_mat = materializations(changed)["prepared_dataset"]
    assert changed_mat.tags[DATA_VERSION_TAG] != original_version
    assert changed_mat.metadata["dataset_path"].value != original.metadata["dataset_path"].value
    assert changed_mat.metadata["samples_test"].value > original.metadata["samples_test"].value
    assert statuses(pipeline) == {
        "prepared_dataset": FRESH,
        "trained_model": STALE,
        "model_checkpoint": FRESH,  # stale only once trained_model is retrained (direct inputs)
        "model_evaluation": FRESH,
    }
    assert root_cause(pipeline, "trained_model") == (StaleCauseCategory.DATA, "prepared_dataset")

    # The original split again: the content version is back, and so is freshness.
    restored = pipeline.materialize(["prepared_dataset"])
    assert version_of(restored, "prepared_dataset") == original_version
    assert statuses(pipeline) == dict.fromkeys(PIPELINE, FRESH)
