"""Issue 11, must-show 1: the CNN (`mnist`) and the regressor (`tabular`) in one code
location, materialized at the same time: separate asset keys, lineage and staleness; a new
data version of one triggers only its own retraining; each model's minimum-metric check
uses its own metric and direction (accuracy: higher is better, rmse: lower is better).

Both `<name>_training_pipeline` jobs run as two `dagster job execute` processes against one
DAGSTER_HOME, one storage root and the session's Ray (1 rank x 0.5 CPU each, so both fit on
its 2 CPUs together); the test asserts that their training steps overlapped in time.
(Two `execute_in_process` calls in threads deadlock in Dagster's logging set-up.)
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from dagster._core.test_utils import instance_for_test

from tinyexp_dagster import default_resources
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    RunScopedJSONIOManager,
    StorageResource,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = ["prepared_dataset", "trained_model", "model_checkpoint", "model_evaluation"]
ACCURACY_MIN, RMSE_MAX = 0.5, 400.0  # each in its own metric's units and direction
# The code location, as a user's definitions.py composes two pipelines.
LOCATION = textwrap.dedent(
    """
    import dagster as dg
    from tinyexp_dagster import default_resources, pipeline_defs

    def pipelines():
        return dg.Definitions.merge(
            pipeline_defs(
                "mnist", "tinyexp_core.examples.mnist_exp:Exp", ["train_cfg.num_epochs=1"],
                metric_threshold={accuracy},
            ),
            pipeline_defs(
                "tabular", "tinyexp_core.examples.tabular_exp:Exp", metric_threshold={rmse}
            ),
        )

    defs = dg.Definitions.merge(pipelines(), dg.Definitions(resources=default_resources()))
    """
).format(accuracy=ACCURACY_MIN, rmse=RMSE_MAX)
RUN_CONFIGS = {
    "mnist": {},
    # the typed `exp` for the regressor: 3 epochs instead of its default 20
    "tabular": {
        "ops": {"tabular__trained_model": {"config": {"exp": {"train_cfg": {"num_epochs": 3}}}}}
    },
}


def code_location(module_dir: Path, storage_root: Path, redis_url: str) -> dg.Definitions:
    """The same code location in this process (for sensors, staleness, re-evaluation)."""
    (module_dir / "two_pipelines.py").write_text(LOCATION)
    sys.path.insert(0, str(module_dir))
    try:
        import two_pipelines
    finally:
        sys.path.remove(str(module_dir))
    storage = StorageResource(root=str(storage_root))
    resources = {
        **default_resources(),
        "ray": RayDDPResource(num_workers=1, num_cpus_per_worker=0.5),
        "redis": RedisProgressResource(url=redis_url),
        "storage": storage,
        "io_manager": RunScopedJSONIOManager(storage=storage),
    }
    return dg.Definitions.merge(two_pipelines.pipelines(), dg.Definitions(resources=resources))


def key(name: str, asset: str) -> dg.AssetKey:
    return dg.AssetKey([name, asset])


@pytest.fixture(scope="module")
def both(ray_cluster, redis_url: str, tmp_path_factory: pytest.TempPathFactory):
    """Both training pipelines, run at the same time once; yields (defs, instance, runs)."""
    work = tmp_path_factory.mktemp("two-pipelines")
    storage_root = work / "storage"
    defs = code_location(work, storage_root, redis_url)
    with instance_for_test() as instance:
        env = {
            **os.environ,
            "DAGSTER_HOME": instance.root_directory,
            "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
            "TINYEXP_STORAGE_ROOT": str(storage_root),
            "TINYEXP_REDIS_URL": redis_url,
            "TINYEXP_NUM_WORKERS": "1",
            "TINYEXP_CPUS_PER_WORKER": "0.5",
            "PYTHONPATH": os.pathsep.join([str(work), str(REPO_ROOT)]),
        }
        dagster = str(Path(sys.executable).with_name("dagster"))
        procs = {}
        for name, config in RUN_CONFIGS.items():
            config_file = work / f"{name}.yaml"
            config_file.write_text(yaml.safe_dump(config))
            procs[name] = subprocess.Popen(
                [dagster, "job", "execute", "-m", "two_pipelines"]
                + ["-j", f"{name}_training_pipeline", "-c", str(config_file)],
                cwd=work,
                env=env,
                stdout=open(work / f"{name}.log", "wb"),
                stderr=subprocess.STDOUT,
            )
        for name, proc in procs.items():
            code = proc.wait(timeout=560)
            log = (work / f"{name}.log").read_text(errors="replace")
            assert code == 0, f"{name}_training_pipeline exited {code}:\n{log[-4000:]}"
        runs = {
            name: instance.get_runs(dg.RunsFilter(job_name=f"{name}_training_pipeline"))[0]
            for name in RUN_CONFIGS
        }
        yield defs, instance, runs


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


def latest(instance: dg.DagsterInstance, name: str, asset: str) -> dg.AssetMaterialization:
    event = instance.get_latest_materialization_event(key(name, asset))
    assert event is not None and event.asset_materialization is not None, f"{name}/{asset}"
    return event.asset_materialization


def check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return [r.dagster_event.event_specific_data for r in records]


def test_both_materialize_at_the_same_time(both) -> None:
    defs, instance, runs = both
    for name, run in runs.items():
        assert run.status == dg.DagsterRunStatus.SUCCESS, name
    mnist = step_window(instance, runs["mnist"].run_id, "mnist__trained_model")
    tabular = step_window(instance, runs["tabular"].run_id, "tabular__trained_model")
    assert mnist[0] < tabular[1] and tabular[0] < mnist[1], (
        f"training steps did not overlap: mnist {mnist}, tabular {tabular}"
    )


def test_separate_keys_and_lineage(both) -> None:
    defs, instance, runs = both
    graph = defs.resolve_asset_graph()
    for name in ("mnist", "tabular"):
        for parent, child in zip(ASSETS, ASSETS[1:], strict=False):
            assert list(graph.get(key(name, child)).parent_keys) == [key(name, parent)]
        records = instance.all_logs(
            runs[name].run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
        )
        assert {r.dagster_event.asset_key for r in records} == {key(name, a) for a in ASSETS}
        assert graph.get(key(name, "trained_model")).group_name == name
    mnist = latest(instance, "mnist", "model_evaluation").metadata
    tabular = latest(instance, "tabular", "model_evaluation").metadata
    assert mnist["primary_metric"].value == "accuracy (max)" and "rmse" not in mnist
    assert tabular["primary_metric"].value == "rmse (min)" and "accuracy" not in tabular
    assert math.isfinite(tabular["rmse"].value) and tabular["rmse"].value > 0
    trained = latest(instance, "tabular", "trained_model").metadata
    # the typed `exp` reached the run, and the record says so
    assert trained["effective_config"].value["train_cfg"]["num_epochs"] == 3
    assert trained["epochs"].value == 3


def test_each_check_uses_its_own_metric_and_direction(both) -> None:
    defs, instance, runs = both
    checks = {}
    for name, run in runs.items():
        evaluations = check_evaluations(instance, run.run_id)
        [checks[name]] = [e for e in evaluations if e.check_name == "minimum_metric"]
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
