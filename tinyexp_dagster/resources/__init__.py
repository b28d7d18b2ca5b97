"""Dagster resources: Ray DDP compute, Redis progress store, storage root."""

from .io import RunScopedPickleIOManager
from .ray import RayDDPResource
from .redis import RedisProgressResource
from .storage import StorageResource

__all__ = [
    "RayDDPResource",
    "RedisProgressResource",
    "RunScopedPickleIOManager",
    "StorageResource",
]
