"""What a pipeline holds follows what the experiment implements (issue 11): an experiment
without a TrainResult (`run()` only, or `train()` without a primary metric) becomes one
training asset that runs on the Ray ranks, streams rank 0's log into the step log and
records its output directory and `run()`'s value; without `prepare_data` there is no
dataset asset."""

from __future__ import annotations

import math

import dagster as dg
from dagster._core.test_utils import instance_for_test

from tinyexp_dagster import pipeline_defs
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    RunScopedJSONIOManager,
    StorageResource,
)

PI = "tinyexp_core.examples.pi_exp:Exp"


def test_an_experiment_without_train_result_is_one_training_asset(
    ray_cluster, redis_url, tmp_path
) -> None:
    storage = StorageResource(root=str(tmp_path))
    defs = dg.Definitions.merge(
        pipeline_defs("pi", PI, ["num_samples=20000"]),
        dg.Definitions(
            resources={
                "ray": RayDDPResource(num_workers=2, num_cpus_per_worker=0.5),
                "redis": RedisProgressResource(url=redis_url),
                "storage": storage,
                "io_manager": RunScopedJSONIOManager(storage=storage),
            }
        ),
    )
    assert [k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()] == [
        "pi/trained_model"
    ]
    with instance_for_test() as instance:
        result = defs.resolve_job_def("pi_training_pipeline").execute_in_process(instance=instance)
        assert result.success
        value = result.asset_value(dg.AssetKey(["pi", "trained_model"]))
        assert math.isclose(value["returned"]["pi"], math.pi, abs_tol=0.05)
        assert value["returned"]["world_size"] == 2
        assert value["run_dir"].startswith(str(tmp_path))
        [materialization] = result.asset_materializations_for_node("pi__trained_model")
        assert materialization.metadata["effective_config"].value["num_samples"] == 20000
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
        assert any("pi ~= " in line for line in logs), "rank 0's log reaches the step log"
