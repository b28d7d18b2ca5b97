"""Old import path of the Redis servers, kept for outside code: they now live in
`tinyexp_core.services` (`embedded_redis`, `redis_cluster`, `redis_process`, `lifecycle`)."""

from __future__ import annotations

from tinyexp_core.services.embedded_redis import EmbeddedRedis, find_redis_url, resolve_redis_url
from tinyexp_core.services.lifecycle import (
    DEFAULT_IDLE_STOP_S,
    ENV_IDLE_STOP_S,
    RESERVED_PORT,
    free_port,
    idle_stop_s,
)
from tinyexp_core.services.lifecycle import kill_pid as _kill_pid
from tinyexp_core.services.lifecycle import pid_alive as _pid_alive
from tinyexp_core.services.redis_cluster import RedisClusterManager
from tinyexp_core.services.redis_process import is_redis_process as _is_redis_process
from tinyexp_core.services.redis_process import redis_server_executable

__all__ = [
    "DEFAULT_IDLE_STOP_S",
    "ENV_IDLE_STOP_S",
    "RESERVED_PORT",
    "EmbeddedRedis",
    "RedisClusterManager",
    "_is_redis_process",
    "_kill_pid",
    "_pid_alive",
    "find_redis_url",
    "free_port",
    "idle_stop_s",
    "redis_server_executable",
    "resolve_redis_url",
]
