"""Issue 11, must-show 1: the CNN (`mnist`) and the regressor (`tabular`) in one code
location, materialized at the same time: separate asset keys, lineage and staleness; a new
data version of one triggers only its own retraining; each model's minimum-metric check
uses its own metric and direction (accuracy: higher is better, rmse: lower is better).

Both `<name>_training_pipeline` jobs run in two threads against one Dagster instance and
the session's Ray (1 rank x 0.5 CPU each, so both fit on its 2 CPUs together); the test
asserts that their training steps overlapped in time.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from dagster._core.test_utils import instance_for_test

from tinyexp_dagster import default_resources, pipeline_defs
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    RunScopedJSONIOManager,
    StorageResource,
)

MNIST = "tinyexp_core.examples.mnist_exp:Exp"
TABULAR = "tinyexp_core.examples.tabular_exp:Exp"
ASSETS = ["prepared_dataset", "trained_model", "model_checkpoint", "model_evaluation"]
ACCURACY_MIN, RMSE_MAX = 0.5, 400.0  # each in its own metric's units and direction


def code_location(storage_root: Path, redis_url: str) -> dg.Definitions:
    """Two pipelines and one set of resources, as a user's definitions.py composes them."""
    storage = StorageResource(root=str(storage_root))
    resources = {
        **default_resources(),
        "ray": RayDDPResource(num_workers=1, num_cpus_per_worker=0.5),
        "redis": RedisProgressResource(url=redis_url),
        "storage": storage,
        "io_manager": RunScopedJSONIOManager(storage=storage),
    }
    return dg.Definitions.merge(
        pipeline_defs("mnist", MNIST, ["train_cfg.num_epochs=1"], metric_threshold=ACCURACY_MIN),
        pipeline_defs("tabular", TABULAR, metric_threshold=RMSE_MAX),
        dg.Definitions(resources=resources),
    )


def key(name: str, asset: str) -> dg.AssetKey:
    return dg.AssetKey([name, asset])


@pytest.fixture(scope="module")
def both(ray_cluster, redis_url: str, tmp_path_factory: pytest.TempPathFactory):
    """Both training pipelines, run concurrently once; yields (defs, instance, results)."""
    defs = code_location(tmp_path_factory.mktemp("two-pipelines"), redis_url)
    run_configs = {
        "mnist": {},
        # typed `exp` for the regressor: 3 epochs instead of its default 20
        "tabular": {
            "ops": {"tabular__trained_model": {"config": {"exp": {"train_cfg": {"num_epochs": 3}}}}}
        },
    }
    with instance_for_test() as instance:
        results: dict[str, Any] = {}

        def run(name: str) -> None:
            job = defs.resolve_job_def(f"{name}_training_pipeline")
            results[name] = job.execute_in_process(
                instance=instance, run_config=run_configs[name], raise_on_error=False
            )

        threads = [threading.Thread(target=run, args=(n,)) for n in run_configs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=560)
        yield defs, instance, results


def step_window(instance: dg.DagsterInstance, run_id: str, step: str) -> tuple[float, float]:
    events = instance.all_logs(run_id)
    start = [
        e.timestamp
        for e in events
        if e.step_key == step
        and e.dagster_event
        and e.dagster_event.event_type == dg.DagsterEventType.STEP_START
    ]
    end = [
        e.timestamp
        for e in events
        if e.step_key == step
        and e.dagster_event
        and e.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
    ]
    assert start and end, f"{step} of run {run_id} did not start and succeed"
    return start[0], end[0]


def test_both_materialize_at_the_same_time(both) -> None:
    defs, instance, results = both
    for name, result in results.items():
        assert result.success, f"{name}: " + "; ".join(
            str(e.step_failure_data.error.message) for e in result.all_events if e.is_step_failure
        )
    mnist = step_window(instance, results["mnist"].run_id, "mnist__trained_model")
    tabular = step_window(instance, results["tabular"].run_id, "tabular__trained_model")
    assert mnist[0] < tabular[1] and tabular[0] < mnist[1], (
        f"training steps did not overlap: mnist {mnist}, tabular {tabular}"
    )


def test_separate_keys_and_lineage(both) -> None:
    defs, instance, results = both
    graph = defs.resolve_asset_graph()
    for name in ("mnist", "tabular"):
        for parent, child in zip(ASSETS, ASSETS[1:], strict=False):
            assert list(graph.get(key(name, child)).parent_keys) == [key(name, parent)]
        materialized = {e.asset_key for e in results[name].get_asset_materialization_events()}
        assert materialized == {key(name, a) for a in ASSETS}
        assert graph.get(key(name, "trained_model")).group_name == name
    evaluation = {
        name: results[name].asset_value(key(name, "model_evaluation")) for name in results
    }
    assert evaluation["mnist"]["primary_metric"] == {"name": "accuracy", "direction": "max"}
    assert evaluation["tabular"]["primary_metric"] == {"name": "rmse", "direction": "min"}
    assert math.isfinite(evaluation["tabular"]["value"]) and evaluation["tabular"]["value"] > 0
    trained = results["tabular"].asset_value(key("tabular", "trained_model"))
    assert trained["config"]["train_cfg"]["num_epochs"] == 3  # the typed `exp` reached the run
    assert trained["num_epochs"] == 3


def test_each_check_uses_its_own_metric_and_direction(both) -> None:
    defs, instance, results = both
    checks = {}
    for name in results:
        [check] = [
            e
            for e in results[name].get_asset_check_evaluations()
            if e.check_name == "minimum_metric"
        ]
        checks[name] = check
    assert checks["mnist"].passed and "accuracy" in checks["mnist"].metadata
    assert ">= threshold" in checks["mnist"].description
    assert checks["tabular"].passed and "rmse" in checks["tabular"].metadata
    assert "<= threshold" in checks["tabular"].description

    # The regressor's rmse against a threshold below it: lower is better, so it fails.
    rmse = checks["tabular"].metadata["rmse"].value
    strict = {"ops": {"tabular__model_evaluation": {"config": {"threshold": rmse / 2}}}}
    again = defs.resolve_job_def("tabular_evaluate_job").execute_in_process(
        instance=instance, run_config=strict, raise_on_error=False
    )
    [check] = again.get_asset_check_evaluations()
    assert not check.passed and f"not <= threshold {rmse / 2:.4f}" in check.description


def statuses(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, StaleStatus]:
    resolver = CachingStaleStatusResolver(
        instance, defs.resolve_asset_graph(), LoadingContextForTest(instance)
    )
    return {
        f"{name}/{asset}": resolver.get_status(key(name, asset))
        for name in ("mnist", "tabular")
        for asset in ASSETS
    }


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")
def test_new_data_retrains_only_its_own_pipeline(both) -> None:
    defs, instance, _ = both
    assert set(statuses(defs, instance).values()) == {StaleStatus.FRESH}
    sensors = {
        name: defs.resolve_sensor_def(f"{name}_retrain_on_new_data_sensor")
        for name in ("mnist", "tabular")
    }
    cursors = {}
    for name, sensor in sensors.items():  # the daemon's first ticks: no new data yet
        data = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        assert not data.run_requests, (name, data.skip_message)
        cursors[name] = data.cursor

    # A new data version of the regressor's data only (another split seed).
    new_split = {
        "ops": {"tabular__prepared_dataset": {"config": {"exp": {"data_cfg": {"split_seed": 7}}}}}
    }
    prepared = dg.materialize(
        [defs.get_assets_def(key("tabular", "prepared_dataset"))],
        instance=instance,
        resources={
            "storage": defs.resources["storage"],
            "io_manager": defs.resources["io_manager"],
        },
        run_config=new_split,
    )
    assert prepared.success
    stale = {k for k, v in statuses(defs, instance).items() if v == StaleStatus.STALE}
    assert stale == {"tabular/trained_model"}

    requests = {}
    for name, sensor in sensors.items():
        context = dg.build_sensor_context(instance=instance, cursor=cursors[name], definitions=defs)
        requests[name] = sensor.evaluate_tick(context)
    assert not requests["mnist"].run_requests, requests["mnist"].skip_message
    [request] = requests["tabular"].run_requests
    assert request.run_key.startswith("data:")
    assert sensors["tabular"].job_name == "tabular_retrain_job"
