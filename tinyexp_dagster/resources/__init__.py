"""Dagster resources: Ray DDP compute, Redis progress store, storage root."""

from .io import RunScopedJSONIOManager
from .ray import RayDDPResource
from .redis import RedisProgressResource
from .storage import StorageResource

__all__ = [
    "RayDDPResource",
    "RedisProgressResource",
    "RunScopedJSONIOManager",
    "StorageResource",
]
