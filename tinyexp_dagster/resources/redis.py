"""The Redis that holds run-level progress: a configured URL or the embedded server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import dagster as dg
from pydantic import Field


class StepLog(Protocol):
    """Where `for_run` says whether progress is on: Dagster's `context.log`, or a
    `logging.Logger`."""

    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


@dataclass(frozen=True)
class RunProgress:
    """The progress store as one training run sees it: what its ranks need in their
    environment, and the final status the orchestrator writes when the ranks cannot."""

    url: str | None  # None: progress reporting is off for this run
    run_id: str  # the progress key's run id (the Dagster run id)
    finished_ttl_s: int
    socket_timeout_s: float

    def env(self) -> dict[str, str]:
        """Identity and secret for the ranks: the run id, and the URL (it may hold a
        password, so it never travels in the config)."""
        from tinyexp_core.config.env import ENV_PROGRESS_RUN_ID, ENV_PROGRESS_URL

        env = {ENV_PROGRESS_RUN_ID: self.run_id}
        if self.url:
            env[ENV_PROGRESS_URL] = self.url
        return env

    def mark(self, status: str, error: str = "", *, only_if_active: bool = False) -> None:
        """Best effort: record a final status that the ranks could not write themselves
        (killed, cancelled, failed before they registered); `only_if_active`: unless a
        final status is there already (the stall sensor's verdict)."""
        if not self.url:
            return
        from tinyexp_core.progress import mark_status
        from tinyexp_core.services.redis_client import make_client

        with contextlib.suppress(Exception):
            client = make_client(self.url, socket_timeout_s=self.socket_timeout_s)
            try:
                mark_status(
                    client,
                    self.run_id,
                    status,
                    error,
                    ttl_s=self.finished_ttl_s,
                    only_if_active=only_if_active,
                )
            finally:
                client.close()

    @contextlib.contextmanager
    def kept_in_use(self) -> Iterator[None]:
        """Hold one connection to the store while the ranks run: an embedded Redis's idle
        watcher counts it as a user, so it cannot stop the server while Ray is still
        starting the ranks (before they connect)."""
        if not self.url:
            yield
            return
        from tinyexp_core.services.redis_client import make_client

        client = make_client(self.url, socket_timeout_s=self.socket_timeout_s)
        try:
            with contextlib.suppress(Exception):  # best effort, like every progress write
                client.ping()
            yield
        finally:
            client.close()


class RedisProgressResource(dg.ConfigurableResource):
    """Progress store. `url` (set it with `EnvVar`, it may hold a password) or, when unset,
    the project's embedded Redis under the storage root (loopback, never port 6379)."""

    url: str | None = Field(
        default=None,
        description="redis://, rediss:// or unix:// URL (use an EnvVar: it may hold a "
        "password); unset: the embedded Redis under the storage root",
    )
    socket_timeout_s: float = Field(
        default=0.5, description="seconds a Redis call may take before it counts as failed"
    )
    throttle_s: float = Field(
        default=2.0,
        description="seconds between a run's per-step progress writes "
        "(the experiment's progress_cfg.throttle_s)",
    )
    finished_ttl_s: int = Field(
        default=7 * 24 * 3600,
        description="seconds a finished run's progress hash stays in Redis "
        "(the experiment's progress_cfg.finished_ttl_s)",
    )

    def forced(self) -> dict[str, int | float]:
        """This resource's reporting settings, forced on the experiment (typed values, in
        the run record)."""
        return {
            "progress_cfg.throttle_s": self.throttle_s,
            "progress_cfg.finished_ttl_s": self.finished_ttl_s,
        }

    def for_run(self, storage_root: str, run_id: str, *, log: StepLog | None = None) -> RunProgress:
        """The store for one run. A malformed URL or a rejected password raises a
        ConfigError (the run fails now); an unreachable server turns progress off for the
        run, with a warning on `log` (a logger: `context.log`), since progress never
        decides whether a model trains."""
        from tinyexp_core.config.exceptions import ConfigError, TinyExpError

        url: str | None
        try:
            url = self.resolve_url(storage_root)
            self.check_auth(url)
        except ConfigError:
            raise
        except TinyExpError as err:
            if log is not None:
                log.warning(f"progress reporting off: {err}")
            url = None
        else:
            if log is not None:
                log.info(f"progress in Redis at {self.redacted(url)}")
        return RunProgress(url, run_id, self.finished_ttl_s, self.socket_timeout_s)

    def resolve_url(self, storage_root: str) -> str:
        """Validate the configured URL or start/reuse the embedded server."""
        from tinyexp_core.services.embedded_redis import resolve_redis_url

        return resolve_redis_url(self.url or None, storage_root)

    def check_auth(self, url: str) -> None:
        """Raise a ConfigError when the server rejects the credentials; an unreachable
        server is not an error here (progress is best effort)."""
        import redis as redis_py

        from tinyexp_core.config.exceptions import InvalidRedisUrlError
        from tinyexp_core.services.redis_client import classify_redis_error, make_client

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
        """`url` with its password replaced by ***, for logs and messages."""
        from tinyexp_core.services.redis_client import redact_url

        return redact_url(url)
