"""A sweep's definitions (no training): partitions, the pool and its limit, the jobs, the
component's YAML keys, definition-time errors, and the live leaderboard from Redis."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest
from dagster._core.test_utils import instance_for_test

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_dagster import TinyExpPipeline, default_resources, pipeline_defs

EXP = "tinyexp_core.examples.mnist_exp:Exp"
GRID = {"optimizer_cfg.lr": [0.001, 0.003], "module_cfg.dropout": [0.1, 0.25]}
KEYS = [f"lr={lr};dropout={d}" for lr in ("0.001", "0.003") for d in ("0.1", "0.25")]
POOL = "tinyexp_sw_sweep"


def key(asset: str) -> dg.AssetKey:
    return dg.AssetKey(["sw", asset])


def sweep_defs(**kwargs) -> dg.Definitions:
    defs = pipeline_defs("sw", EXP, sweep=GRID, max_concurrent=2, **kwargs)
    return dg.Definitions.merge(defs, dg.Definitions(resources=default_resources()))


def test_trials_partition_the_training_and_downstream_assets() -> None:
    defs = sweep_defs()
    graph = defs.resolve_asset_graph()
    for asset in ("trained_model", "model_checkpoint", "model_evaluation"):
        assert graph.get(key(asset)).partitions_def.get_partition_keys() == KEYS, asset
    for asset in ("prepared_dataset", "sweep_leaderboard"):
        assert graph.get(key(asset)).partitions_def is None, asset
    assert defs.get_assets_def(key("trained_model")).op.pool == POOL
    assert defs.get_assets_def(key("model_checkpoint")).op.pool is None
    # A job run is one trial: the dataset and leaderboard belong to an asset backfill.
    job = defs.resolve_job_def("sw_training_pipeline")
    assert job.partitions_def.get_partition_keys() == KEYS
    assert {
        n for n in job.graph.node_names() if not n.endswith(("_integrity", "_sanity", "_gate"))
    } == {
        "sw__trained_model",
        "sw__model_checkpoint",
        "sw__model_evaluation",
    }
    assert {s.name for s in defs.sensors} == {
        "training_progress_sensor",
        "stalled_training_sensor",
        "sw_sweep_pool_sensor",
    }


def test_pool_sensor_sets_the_limit_once() -> None:
    sensor = sweep_defs().resolve_sensor_def("sw_sweep_pool_sensor")
    with instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert instance.event_log_storage.get_concurrency_info(POOL).slot_count == 2
        assert "set to 2" in first.skip_message
        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert "already 2" in again.skip_message


def test_component_yaml_keys_match_pipeline_defs() -> None:
    attributes = {
        "name": "sw",
        "experiment": EXP,
        "sweep": GRID,
        "max_concurrent": 2,
        "early_stopping": {"warmup_epochs": 1},
    }
    component = TinyExpPipeline.from_attributes_dict(attributes=attributes)
    defs = dg.Definitions.merge(
        component.build_defs(None), dg.Definitions(resources=default_resources())
    )
    graph = defs.resolve_asset_graph()
    assert graph.get(key("trained_model")).partitions_def.get_partition_keys() == KEYS
    assert graph.get(key("sweep_leaderboard")) is not None


def test_definition_time_errors() -> None:
    with pytest.raises(ConfigValueError, match="'max_concurrent'.*no sweep"):
        pipeline_defs("sw", EXP, max_concurrent=2)
    with pytest.raises(ConfigValueError, match="sweep.optimizer_cfg.lrr"):
        pipeline_defs("sw", EXP, sweep={"optimizer_cfg.lrr": [0.1]})
    with pytest.raises(ConfigValueError, match="'sweep'.*run\\(\\)|'sweep'.*primary_metric"):
        pipeline_defs("pi", "tinyexp_core.examples.pi_exp:Exp", sweep={"seed": [1, 2]})


def test_a_run_cannot_change_a_key_its_trial_sets() -> None:
    from tinyexp_core.examples.mnist_exp import Exp
    from tinyexp_dagster.assets.common import PipelineSpec

    spec = PipelineSpec("sw", EXP, Exp, defaults=Exp())
    trial = ["optimizer_cfg.lr=0.001"]
    with pytest.raises(dg.Failure, match="the sweep trial"):
        spec.overrides_for({}, ["optimizer_cfg.lr=0.5"], trial)
    assert spec.overrides_for({}, ["seed=3"], trial) == [*trial, "seed=3"]


def test_progress_events_refresh_the_leaderboard(redis_url: str) -> None:
    """A sweep trial's epoch_end becomes an observation of `<name>/sweep_leaderboard`
    (ranked rows); once every trial ended, a materialization."""
    from tinyexp_core.examples.mnist_exp import Exp
    from tinyexp_core.progress import EVENTS_STREAM, run_key, write_run_sweep
    from tinyexp_core.services.redis_client import make_client
    from tinyexp_core.sweep import SweepBoard, build_sweep
    from tinyexp_dagster.sensors.training_progress import _progress_tick

    client = make_client(redis_url)
    board_key = f"tinyexp:sweep:sw:{uuid.uuid4().hex}"
    board = SweepBoard(client, board_key)
    board.declare(build_sweep(Exp, [], {"optimizer_cfg.lr": [0.001, 0.003]}), "accuracy", "max")
    runs = {"lr=0.001": uuid.uuid4().hex, "lr=0.003": uuid.uuid4().hex}
    try:
        for run_id in runs.values():
            client.hset(run_key(run_id), "asset", "sw/trained_model")  # as the reporter's start
            write_run_sweep(client, run_id, board_key)  # as the trial's sweep monitor
        cursor = client.xadd(EVENTS_STREAM, {"event": "marker", "run_id": "none"})
        board.update("lr=0.001", status="running", epoch=1, metric=0.6, best=0.6)
        board.update("lr=0.003", status="running", epoch=1, metric=0.9, best=0.9)
        client.xadd(EVENTS_STREAM, {"event": "epoch_end", "run_id": runs["lr=0.003"], "epoch": "0"})
        result = _progress_tick(client, cursor)
        [board_event] = [e for e in result.asset_events if e.asset_key == key("sweep_leaderboard")]
        assert isinstance(board_event, dg.AssetObservation)
        rows = [r.data for r in board_event.metadata["leaderboard"].records]
        assert [r["trial"] for r in rows] == ["lr=0.003", "lr=0.001"]
        assert [r["status"] for r in rows] == ["running", "running"]

        board.update("lr=0.001", status="pruned")
        board.update("lr=0.003", status="finished")
        last = client.xadd(
            EVENTS_STREAM,
            {"event": "finished", "run_id": runs["lr=0.003"], "status": "succeeded"},
        )
        final = _progress_tick(client, result.cursor)
        [board_event] = [e for e in final.asset_events if e.asset_key == key("sweep_leaderboard")]
        assert isinstance(board_event, dg.AssetMaterialization)
        assert board_event.metadata["num_pruned"].value == 1 and final.cursor == last
    finally:
        client.delete(*client.keys(f"{board_key}:*"), *[run_key(r) for r in runs.values()])
        client.close()
