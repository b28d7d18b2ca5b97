"""Dagster resources: Ray DDP compute, Redis progress store, storage root, stall settings."""

from .io import RunScopedJSONIOManager
from .ray import RayDDPResource
from .redis import RedisProgressResource
from .stalls import StallSettingsResource
from .storage import StorageResource

__all__ = [
    "RayDDPResource",
    "RedisProgressResource",
    "RunScopedJSONIOManager",
    "StallSettingsResource",
    "StorageResource",
]
