"""Old import path of the warm ranks' pool, kept for outside code (and `launchers/ray.py`,
until its imports move): it now lives in `tinyexp_core.services.ray_pool`."""

from __future__ import annotations

from tinyexp_core.services.ray_pool import (
    DEFAULT_SIZE_CAP,
    POOL_NAME,
    POOL_NAMESPACE,
    PREIMPORTS,
    apply_python_path,
    default_size,
    find_pool,
    pool_status,
    release,
    run_token,
    start_pool,
    take,
    warm_up,
)

__all__ = [
    "DEFAULT_SIZE_CAP",
    "POOL_NAME",
    "POOL_NAMESPACE",
    "PREIMPORTS",
    "apply_python_path",
    "default_size",
    "find_pool",
    "pool_status",
    "release",
    "run_token",
    "start_pool",
    "take",
    "warm_up",
]
