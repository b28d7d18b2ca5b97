"""Dagster resources: Ray DDP compute, Redis progress store, storage root, stall settings."""

from tinyexp_dagster.resources.io import RunScopedJSONIOManager
from tinyexp_dagster.resources.ray import RayDDPResource
from tinyexp_dagster.resources.redis import RedisProgressResource
from tinyexp_dagster.resources.stalls import StallSettingsResource
from tinyexp_dagster.resources.storage import StorageResource

__all__ = [
    "RayDDPResource",
    "RedisProgressResource",
    "RunScopedJSONIOManager",
    "StallSettingsResource",
    "StorageResource",
]
