"""Item 6: a step reads the upstream value of its own run (or, re-executed, of its parent
run), never whichever run wrote last. Dagster's default filesystem IO manager keeps one file
per asset for every run, so two runs ending together could promote each other's model;
`RunScopedPickleIOManager` keeps each value under the run that produced it.
"""

from __future__ import annotations

import dagster as dg

from tests.reliability.support import (
    ENV_REDIS,
    ENV_STORAGE,
    materialization_metadata,
    train_config,
    training_pipeline_job,
)


def _config(lr: str) -> dict:
    config = train_config(["train_cfg.num_epochs=1", f"optimizer_cfg.lr={lr}"])
    config["ops"]["model_evaluation"] = {"config": {"min_accuracy": 0.0}}
    return config


def test_a_reexecuted_step_reads_its_own_runs_upstream_value(
    ray_cluster, redis_url, storage, instance, monkeypatch
):
    monkeypatch.setenv(ENV_STORAGE, str(storage))
    monkeypatch.setenv(ENV_REDIS, redis_url)
    job = dg.reconstructable(training_pipeline_job)
    first = dg.execute_job(job, instance, run_config=_config("0.001"))
    second = dg.execute_job(job, instance, run_config=_config("0.002"))
    assert first.success and second.success

    # Promote again from the first run: its trained_model, not the second run's.
    again = dg.execute_job(
        job,
        instance,
        run_config=_config("0.001"),
        reexecution_options=dg.ReexecutionOptions(
            parent_run_id=first.run_id, step_selection=["model_checkpoint"]
        ),
    )
    assert again.success
    promoted = materialization_metadata(instance, again.run_id, "model_checkpoint")
    assert promoted["source_run"] == first.run_id, (
        f"re-executing run {first.run_id} promoted run {promoted['source_run']}'s model"
    )
