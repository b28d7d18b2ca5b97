"""Dagster resources: Ray DDP compute, Redis progress store, storage root."""

from .ray import RayDDPResource
from .redis import RedisProgressResource
from .storage import StorageResource

__all__ = ["RayDDPResource", "RedisProgressResource", "StorageResource"]
