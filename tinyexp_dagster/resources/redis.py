"""The Redis that holds run-level progress: a configured URL or the embedded server."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field


class RedisProgressResource(dg.ConfigurableResource):
    """Progress store. `url` (set it with `EnvVar`, it may hold a password) or, when unset,
    the project's embedded Redis under the storage root (loopback, never port 6379)."""

    url: str | None = Field(default=None, description="redis://, rediss:// or unix:// URL")
    socket_timeout_s: float = 0.5
    throttle_s: float = 2.0  # seconds between per-step progress writes
    finished_ttl_s: int = 7 * 24 * 3600  # finished runs' keys expire after this long

    def resolve_url(self, storage_root: str) -> str:
        """Validate the configured URL or start/reuse the embedded server."""
        from tinyexp_core.redis_server import resolve_redis_url

        return resolve_redis_url(self.url or None, storage_root)

    def check_auth(self, url: str) -> None:
        """Raise a ConfigError when the server rejects the credentials; an unreachable
        server is not an error here (progress is best effort)."""
        import redis as redis_py

        from tinyexp_core.exceptions import InvalidRedisUrlError
        from tinyexp_core.redis_client import classify_redis_error, make_client

        client = make_client(url, socket_timeout_s=self.socket_timeout_s)
        try:
            client.ping()
        except (redis_py.RedisError, OSError) as err:
            # Unreachable, or another reply: the server may come back, progress is best effort.
            if classify_redis_error(err) == "auth":
                raise InvalidRedisUrlError(
                    self.redacted(url), f"authentication failed: {err}"
                ) from None
        finally:
            client.close()

    def redacted(self, url: str) -> str:
        from tinyexp_core.redis_client import redact_url

        return redact_url(url)

    def client(self, storage_root: str, *, start: bool = False) -> Any:
        """A client with explicit timeouts; None when no URL and no embedded server runs."""
        from tinyexp_core.redis_client import make_client
        from tinyexp_core.redis_server import EmbeddedRedis, resolve_redis_url

        if self.url:
            url = resolve_redis_url(self.url, storage_root)
        elif start:
            url = EmbeddedRedis(storage_root).ensure()
        else:
            url = EmbeddedRedis(storage_root).url()
            if url is None:
                return None
        return make_client(url, socket_timeout_s=self.socket_timeout_s)
