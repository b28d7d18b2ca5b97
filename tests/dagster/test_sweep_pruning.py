"""Issue 12, must-show 2: a sweep with early stopping prunes a hopeless trial (lr=10) after
the warm-up: its status is `pruned` (the asset succeeds), its stop checkpoint verifies, its
best checkpoint is promoted and passes the integrity check, and the leaderboard says so.

The trials run one after another (as a backfill with max_concurrent=1 would), each as one
partition run in a real Dagster instance, on the session's Ray and Redis. The hopeless trial
is last, so the others' epoch-1 metrics are in the sweep's board when it ends its warm-up;
`min_trials: 2` keeps the second trial (one other to compare with) from being pruned.
"""

from __future__ import annotations

import math

import dagster as dg
import pytest
from dagster._core.test_utils import instance_for_test

from tinyexp_dagster import pipeline_defs
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    RunScopedJSONIOManager,
    StorageResource,
)

pytestmark = pytest.mark.slow

NAME = "prune"
SWEEP = {"optimizer_cfg.lr": [0.001, 0.002, 10.0]}
HOPELESS = "lr=10"
# 3 epochs, slowed a little, so the stop request lands in epoch 2 (after the warm-up epoch).
OVERRIDES = ["train_cfg.num_epochs=3", "train_cfg.step_delay_s=0.05"]
BACKFILL = "test-prune-sweep"


def key(asset: str) -> dg.AssetKey:
    return dg.AssetKey([NAME, asset])


@pytest.fixture(scope="module")
def swept(ray_cluster, redis_url: str, tmp_path_factory: pytest.TempPathFactory):
    """The sweep's three trials, materialized one after another; yields (defs, instance)."""
    storage = StorageResource(root=str(tmp_path_factory.mktemp("prune-storage")))
    defs = pipeline_defs(
        NAME,
        "tinyexp_core.examples.mnist_exp:Exp",
        OVERRIDES,
        sweep=SWEEP,
        max_concurrent=1,
        early_stopping={"warmup_epochs": 1, "min_trials": 2},
    )
    resources = {
        "ray": RayDDPResource(num_workers=1, num_cpus_per_worker=1),
        "redis": RedisProgressResource(url=redis_url),
        "storage": storage,
        "io_manager": RunScopedJSONIOManager(storage=storage),
    }
    assets, checks = list(defs.assets), list(defs.asset_checks)
    with instance_for_test() as instance:
        prepared = dg.materialize(
            [*assets, *checks],
            selection=[key("prepared_dataset")],
            instance=instance,
            resources=resources,
        )
        assert prepared.success
        trial_assets = dg.AssetSelection.assets(
            key("trained_model"), key("model_checkpoint"), key("model_evaluation")
        )
        for partition in ["lr=0.001", "lr=0.002", HOPELESS]:
            result = dg.materialize(
                [*assets, *checks],
                selection=trial_assets | trial_assets.checks(),
                partition_key=partition,
                instance=instance,
                resources=resources,
                tags={"dagster/backfill": BACKFILL},
                raise_on_error=False,
            )
            assert result.success, f"trial {partition} failed"
        board = dg.materialize(
            [*assets, *checks],
            selection=[key("sweep_leaderboard")],
            instance=instance,
            resources=resources,
        )
        assert board.success
        yield defs, instance


def trained(instance: dg.DagsterInstance, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key("trained_model"), asset_partitions=[partition]),
        limit=1,
    ).records
    assert records, partition
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def test_hopeless_trial_is_pruned_after_the_warm_up(swept) -> None:
    from tinyexp_core.checkpoint import load_checkpoint, verify_checkpoint

    _, instance = swept
    for partition in ("lr=0.001", "lr=0.002"):
        meta = trained(instance, partition)
        assert meta["sweep_status"] == "finished" and meta["epochs"] == 3, meta
    hopeless = trained(instance, HOPELESS)
    assert hopeless["sweep_status"] == "pruned", hopeless
    assert hopeless["pruned_at_epoch"] == 1 and hopeless["epochs"] == 1, hopeless
    assert hopeless["effective_config"]["optimizer_cfg"]["lr"] == 10.0
    # the stop checkpoint was kept, and verifies against its sha256 sidecar
    stop = hopeless["stop_checkpoint"]
    verify_checkpoint(stop)
    assert load_checkpoint(stop)["step"] > 0


def test_pruned_trials_checkpoint_is_promoted_and_verified(swept) -> None:
    _, instance = swept
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key("model_checkpoint"), asset_partitions=[HOPELESS]),
        limit=1,
    ).records
    assert records, "the pruned trial's checkpoint was not promoted"
    run_id = records[0].run_id
    evaluations = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    [integrity] = [
        e.dagster_event.event_specific_data
        for e in evaluations
        if e.dagster_event.event_specific_data.check_name == "checkpoint_integrity"
    ]
    assert integrity.passed, integrity.description


def test_leaderboard_ranks_the_pruned_trial_last(swept) -> None:
    _, instance = swept
    event = instance.get_latest_materialization_event(key("sweep_leaderboard"))
    metadata = event.asset_materialization.metadata
    rows = [r.data for r in metadata["leaderboard"].value.records]
    assert [r["trial"] for r in rows][-1] == HOPELESS
    assert rows[-1]["status"] == "pruned"
    best = [r["best"] for r in rows]
    assert all(math.isfinite(b) for b in best) and best == sorted(best, reverse=True), rows
    assert metadata["num_pruned"].value == 1 and metadata["num_finished"].value == 2


def test_losing_trials_stay_registered_with_a_warning_not_a_failed_run(swept) -> None:
    """In a sweep most trials lose to the best: the gate says so at WARN (the run succeeds,
    the version stays registered, not champion); the hopeless lr=10 is never champion."""
    _, instance = swept
    verdicts = {}
    for partition in ("lr=0.001", "lr=0.002", HOPELESS):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key("model_checkpoint"), asset_partitions=[partition]),
            limit=1,
        ).records
        evaluations = instance.all_logs(
            records[0].run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
        [gate] = [
            e.dagster_event.event_specific_data
            for e in evaluations
            if e.dagster_event.event_specific_data.check_name == "champion_gate"
        ]
        verdicts[partition] = gate
    assert verdicts["lr=0.001"].passed  # the first version becomes champion
    assert not verdicts[HOPELESS].passed
    assert verdicts[HOPELESS].severity == dg.AssetCheckSeverity.WARN
    assert "lost" in verdicts[HOPELESS].description
    hopeless = verdicts[HOPELESS].metadata
    assert hopeless["champion"].value != hopeless["new_version"].value
    assert hopeless["gap"].value < 0  # how much it lost by, in the metric's direction
