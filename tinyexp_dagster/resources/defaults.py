"""`default_resources()`: one set of resources per deployment, read from the environment.

Environment (all optional): `TINYEXP_STORAGE_ROOT` (default ./.tinyexp), `RAY_ADDRESS`
(default: the storage root's local Ray, kept warm), `TINYEXP_REDIS_URL` (default: the embedded Redis
under the storage root), `TINYEXP_NUM_WORKERS` / `TINYEXP_CPUS_PER_WORKER`,
`TINYEXP_STALL_AFTER_S` / `TINYEXP_STALL_ACTION` (the stall sensor's settings).
"""

from __future__ import annotations

import os

import dagster as dg

from tinyexp_dagster.dev_redis import hold_embedded_redis_for_dagster_dev
from tinyexp_dagster.resources.io import RunScopedJSONIOManager
from tinyexp_dagster.resources.ray import RayDDPResource
from tinyexp_dagster.resources.redis import RedisProgressResource
from tinyexp_dagster.resources.stalls import StallSettingsResource
from tinyexp_dagster.resources.storage import StorageResource


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """`ray`, `redis`, `storage`, `stalls` and the JSON `io_manager`, shared by every
    pipeline of a code location:
    `dg.Definitions.merge(*pipelines, dg.Definitions(resources=default_resources()))`."""
    redis_url = dg.EnvVar("TINYEXP_REDIS_URL") if os.environ.get("TINYEXP_REDIS_URL") else None
    storage = StorageResource(root=os.environ.get("TINYEXP_STORAGE_ROOT", ""))
    # Under `dagster dev` the embedded Redis lives as long as it (see dev_redis.py).
    hold_embedded_redis_for_dagster_dev(storage, redis_url)
    return {
        "ray": RayDDPResource(
            address=os.environ.get("RAY_ADDRESS") or None,
            num_workers=int(os.environ.get("TINYEXP_NUM_WORKERS", "2")),
            num_cpus_per_worker=float(os.environ.get("TINYEXP_CPUS_PER_WORKER", "1")),
            storage=storage,  # a run that trains starts the root's local Ray when it starts
        ),
        "redis": RedisProgressResource(url=redis_url),
        "stalls": StallSettingsResource.from_env(),
        "storage": storage,
        "io_manager": RunScopedJSONIOManager(storage=storage),
    }
