"""Helpers of the sensor tests: one daemon-like tick, runs in Redis and in Dagster.

Every tick goes through `build_sensor_context` with an explicit cursor, the way the daemon
calls a sensor. The fixtures (real Redis, real Dagster instance) are in `conftest.py` here.
"""

from typing import Any

import dagster as dg

from tinyexp_core.progress import RedisProgressReporter
from tinyexp_dagster.resources import StallSettingsResource

NO_NEW = "No new materialization events found for asset key AssetKey(['mnist', '{}'])"  # Dagster's
STALE_S = 1000.0  # heartbeat age of a stalled run in these tests (threshold: 60 s)


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    cursor: str | None = None,
    resources: dict[str, Any] | None = None,
) -> Any:
    """One evaluation as the daemon does it; returns run requests, skip message, cursor.
    Without a `stalls` resource the default settings are the deployment's."""
    resources = {"stalls": StallSettingsResource(), **(resources or {})}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return sensor.evaluate_tick(context)


def start_run(
    redis_url: str, run_id: str, *, heartbeat: float, asset: str = "mnist/trained_model"
) -> RedisProgressReporter:
    """A run in Redis: registered, at epoch 0 step 5 with an ETA, last heartbeat at
    `heartbeat` (the reporter's clock stays there)."""
    now = [heartbeat - 1.0]
    rep = RedisProgressReporter(redis_url, run_id, throttle_s=0.0, clock=lambda: now[0])
    rep.start(asset=asset, num_epochs=3, num_steps=10)
    rep.step(epoch=0, step=3, loss=1.5, lr=0.1, samples_per_s=100.0)
    now[0] = heartbeat
    rep.step(epoch=0, step=5, loss=1.25, lr=0.1, samples_per_s=100.0)
    return rep


def dagster_run(
    instance: dg.DagsterInstance,
    job: dg.JobDefinition,
    status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED,
    **kwargs: Any,
) -> dg.DagsterRun:
    config = {
        "ops": {"mnist__trained_model": {"config": {"overrides": ["train_cfg.num_epochs=3"]}}}
    }
    return instance.create_run_for_job(job, run_config=config, status=status, **kwargs)
