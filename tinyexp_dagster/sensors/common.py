"""What the sensors share: settings from the environment, and access to
the progress store (an outage becomes a `SkipReason`, rejected credentials raise)."""

import os
from collections.abc import Callable

import dagster as dg
import redis as redis_py

from tinyexp_core.exceptions import ConfigValueError, InvalidRedisUrlError
from tinyexp_core.redis_client import classify_redis_error, make_client, redact_url
from tinyexp_core.redis_server import find_redis_url

from ..resources import RedisProgressResource, StorageResource

ENV_REDIS_URL = "TINYEXP_REDIS_URL"  # where definitions.py takes the resource's URL from
ENV_STALL_AFTER_S = "TINYEXP_STALL_AFTER_S"
DEFAULT_STALL_AFTER_S = 600.0
ENV_STALL_ACTION = "TINYEXP_STALL_ACTION"
STALL_ACTIONS = ("report", "terminate")


# ---------------------------------------------------------------- environment


def stall_after_s() -> float:
    """Seconds without a heartbeat after which a running run counts as stalled."""
    value = _env_number(ENV_STALL_AFTER_S, DEFAULT_STALL_AFTER_S)
    if not 0 < value < float("inf"):
        raise ConfigValueError(ENV_STALL_AFTER_S, value, "a finite number of seconds > 0")
    return value


def stall_action() -> str:
    """`report` (mark and log) or `terminate` (also terminate and request a resume run)."""
    action = os.environ.get(ENV_STALL_ACTION) or "report"
    if action not in STALL_ACTIONS:
        raise ConfigValueError(ENV_STALL_ACTION, action, STALL_ACTIONS)
    return action


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigValueError(name, text, "a number") from None


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
