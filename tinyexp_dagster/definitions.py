"""The single Dagster `Definitions` object (`defs`); resources chosen by environment.

Environment (all optional): `TINYEXP_STORAGE_ROOT` (default ./.tinyexp), `RAY_ADDRESS`
(default: a local Ray started per run), `TINYEXP_REDIS_URL` (default: the embedded Redis
under the storage root), `TINYEXP_NUM_WORKERS` / `TINYEXP_CPUS_PER_WORKER`.
"""

from __future__ import annotations

import os

import dagster as dg

from tinyexp_core.timing import mark

from .assets import ASSET_CHECKS, ASSETS
from .dev_redis import hold_embedded_redis_for_dagster_dev
from .jobs import JOBS
from .resources import (
    RayDDPResource,
    RedisProgressResource,
    RunScopedJSONIOManager,
    StorageResource,
)
from .schedules import SCHEDULES
from .sensors import SENSORS


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """One set of resources per deployment, read from the environment at load time."""
    redis_url = dg.EnvVar("TINYEXP_REDIS_URL") if os.environ.get("TINYEXP_REDIS_URL") else None
    storage = StorageResource(root=os.environ.get("TINYEXP_STORAGE_ROOT", ""))
    # Under `dagster dev` the embedded Redis lives as long as it (see dev_redis.py).
    hold_embedded_redis_for_dagster_dev(storage, redis_url)
    return {
        "ray": RayDDPResource(
            address=os.environ.get("RAY_ADDRESS") or None,
            num_workers=int(os.environ.get("TINYEXP_NUM_WORKERS", "2")),
            num_cpus_per_worker=float(os.environ.get("TINYEXP_CPUS_PER_WORKER", "1")),
        ),
        "redis": RedisProgressResource(url=redis_url),
        "storage": storage,
        "io_manager": RunScopedJSONIOManager(storage=storage),
    }


defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=ASSET_CHECKS,
    jobs=JOBS,
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=build_resources(),
    executor=dg.in_process_executor,
)

mark("definitions_loaded")  # for the startup benchmarks (a no-op without a timing file)
