"""TinyExp 0.0.1's Redis image cache config (`RedisCfgMixin`) and its lifetime around a run.

An experiment mixing in `RedisCfgMixin` reads and writes encoded samples on Redis shards
at `redis_cache_cfg.redis_cache_shard_ports` (0.0.1's ResNet example does). In 0.0.1 the
launcher started those shards before a training run; here `serving_redis_cache` does,
around the launch, and stops the shards it started when the run ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from tinyexp_core.config.exceptions import ConfigValueError

_DEFAULT_MANAGER_CPUS = 10


@dataclass
class RedisCfgMixin:
    """Adds `redis_cache_cfg` to an experiment (TinyExp 0.0.1 names and defaults)."""

    @dataclass
    class RedisCacheCfg:
        """Redis shards that cache training samples; started for `mode=train` runs."""

        redis_cache_enabled: bool = True
        redis_cache_shard_ports: list[int] = field(
            default_factory=lambda: [7000, 7001, 7002, 7003, 7004]
        )
        redis_cache_max_memory: int = 160  # GB over all shards, split evenly
        # 0.0.1 reserved these CPUs for its Redis actor on Ray; here the shards are
        # subprocesses of the launching process, so a changed value only earns a warning.
        redis_cluster_manager_cpus: int = _DEFAULT_MANAGER_CPUS

        def validate(self) -> None:
            if not self.redis_cache_enabled:
                return
            if not self.redis_cache_shard_ports:
                raise ConfigValueError(
                    "redis_cache_shard_ports", self.redis_cache_shard_ports, "at least one port"
                )
            if self.redis_cache_max_memory < len(self.redis_cache_shard_ports):
                raise ConfigValueError(
                    "redis_cache_max_memory",
                    self.redis_cache_max_memory,
                    f"at least 1 GB per shard (>= {len(self.redis_cache_shard_ports)})",
                )

        def build_redis_cache(self) -> Any:
            """Start the shards and return their RedisClusterManager; None when disabled."""
            if not self.redis_cache_enabled:
                return None
            from tinyexp_core.services.redis_cluster import RedisClusterManager

            if self.redis_cluster_manager_cpus != _DEFAULT_MANAGER_CPUS:
                logger.warning(
                    "redis_cache_cfg.redis_cluster_manager_cpus={} has no effect: the shards "
                    "run as subprocesses of the launching process, not as a Ray actor",
                    self.redis_cluster_manager_cpus,
                )
            ports = list(self.redis_cache_shard_ports)
            manager = RedisClusterManager(
                ports=ports, max_memory_per_port=self.redis_cache_max_memory // len(ports)
            )
            manager.start_redis_cluster()
            return manager

    redis_cache_cfg: RedisCacheCfg = field(default_factory=RedisCacheCfg)

    def proxy_build_redis_cache(self) -> Any:
        """TinyExp 0.0.1's entry point for starting the cache from the experiment."""
        return self.redis_cache_cfg.build_redis_cache()


@contextlib.contextmanager
def serving_redis_cache(exp: Any) -> Iterator[None]:
    """Keep `exp`'s Redis cache shards up for a training run, then stop those started here."""
    cache_cfg = getattr(exp, "redis_cache_cfg", None)
    if getattr(exp, "mode", "train") != "train" or not isinstance(
        cache_cfg, RedisCfgMixin.RedisCacheCfg
    ):
        yield
        return
    manager = cache_cfg.build_redis_cache()
    try:
        yield
    finally:
        if manager is not None:
            manager.stop_redis_cluster()
