"""What the sensors share: access to the progress store (an outage becomes a `SkipReason`,
rejected credentials raise), and `shared_sensor`, the decorator of the sensors that belong
to the code location rather than to one pipeline. Their settings are resources
(`StallSettingsResource`), never environment variables read in a sensor."""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dagster as dg
import redis as redis_py

from tinyexp_core.config.exceptions import InvalidRedisUrlError
from tinyexp_core.services.embedded_redis import find_redis_url
from tinyexp_core.services.redis_client import classify_redis_error, make_client, redact_url
from tinyexp_dagster.resources import RedisProgressResource, StorageResource

ENV_REDIS_URL = "TINYEXP_REDIS_URL"  # where definitions.py takes the resource's URL from


# ---------------------------------------------------------------- shared sensors


class SharedSensorDefinition(dg.SensorDefinition):
    """A sensor of the whole code location that every pipeline's Definitions lists.

    Dagster keeps one definition per name only when the objects are the same, but a
    component's Definitions are rewritten with its own metadata (`dagster/component_origin`,
    code references) through `with_attributes`, which copies each sensor: two `defs/`
    folders would then hold two different `training_progress_sensor`s. A shared sensor
    belongs to no single component: a rewrite of its metadata (or of its own targets')
    returns the sensor itself, so however many pipelines merge (folders, `pipeline_defs`,
    both) it is defined once.
    """

    def with_attributes(
        self,
        *,
        jobs: Sequence[Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dg.SensorDefinition:
        # The same targets again (the component rewrites their metadata too) is no change.
        if jobs is None or (self.has_jobs and [j.name for j in jobs] == self._job_names()):
            return self
        return super().with_attributes(jobs=jobs, metadata=metadata)

    def _job_names(self) -> list[str]:
        return [job.name for job in self.jobs]


def shared_sensor(**kwargs: Any) -> Callable[[Callable[..., Any]], SharedSensorDefinition]:
    """`@dg.sensor(**kwargs)`, building a `SharedSensorDefinition`."""

    def decorate(fn: Callable[..., Any]) -> SharedSensorDefinition:
        sensor = SharedSensorDefinition(evaluation_fn=fn, **kwargs)
        functools.update_wrapper(sensor, wrapped=fn)
        return sensor

    return decorate


# ---------------------------------------------------------------- progress store access

Tick = Callable[[redis_py.Redis], dg.SensorResult | dg.SkipReason]


def with_store(
    redis_res: RedisProgressResource, storage: StorageResource, tick: Tick
) -> dg.SensorResult | dg.SkipReason:
    """Run `tick(client)` on the progress store; no store or an outage becomes a SkipReason
    naming the redacted URL, rejected credentials raise (a configuration error)."""
    root = str(storage.resolved_root())
    url, why = find_redis_url(redis_res.url, root, url_name=ENV_REDIS_URL)
    if url is None:
        return dg.SkipReason(why)
    shown = redact_url(url)
    client = make_client(url, socket_timeout_s=redis_res.socket_timeout_s)
    try:
        return tick(client)
    except (redis_py.RedisError, OSError) as err:
        kind = classify_redis_error(err)
        if kind == "auth":
            raise InvalidRedisUrlError(shown, f"authentication failed: {err}") from None
        if kind == "unreachable":
            return dg.SkipReason(f"Redis unreachable at {shown}: {type(err).__name__}: {err}")
        raise
    finally:
        client.close()
