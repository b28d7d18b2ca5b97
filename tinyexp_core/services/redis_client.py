"""Redis clients: URL validation and redaction, clients with explicit timeouts, and the one
classifier that tells rejected credentials from an outage.

Server management (owned redis-server processes, the embedded server) is in `services`.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qsl, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tinyexp_core.config.exceptions import InvalidRedisUrlError
from tinyexp_core.redaction import redact_url

__all__ = [
    "URL_SCHEMES",
    "ProbeResult",
    "RedisErrorKind",
    "classify_redis_error",
    "make_client",
    "probe_redis",
    "redact_url",
    "validate_redis_url",
]

URL_SCHEMES = ("redis", "rediss", "unix")
PROBE_TIMEOUT_S = 0.25

RedisErrorKind = Literal["auth", "unreachable", "other"]
ProbeResult = Literal["up", "down", "auth"]

# Reply prefixes of a server that refuses the credentials. redis-py maps them to
# AuthenticationError / NoPermissionError, but a proxy, an older client or a pipeline can
# surface them as a plain ResponseError: the reply decides, not the class.
_AUTH_REPLIES = ("NOAUTH", "WRONGPASS", "NOPERM", "invalid password", "invalid username")


def make_client(
    url: str,
    *,
    socket_timeout_s: float = 0.5,
    connect_timeout_s: float = 0.5,
    decode_responses: bool = True,
) -> redis.Redis:
    """A Redis client with explicit timeouts and at most one quick retry."""
    # Only connection errors (refused, reset by a restarted server) are retried, and at once;
    # a timeout is not, so an unreachable host costs one timeout, not redis-py's default
    # three retries with up to 10 s of backoff.
    retry = Retry(
        ExponentialBackoff(cap=0.05, base=0.01),
        retries=1,
        supported_errors=(redis.ConnectionError,),
    )
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=retry,
        decode_responses=decode_responses,
    )


def validate_redis_url(url: str) -> str:
    """Return `url` if it is a well-formed Redis URL, else raise InvalidRedisUrlError."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRedisUrlError(shown, f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        allowed = ", ".join(f"{s}://" for s in URL_SCHEMES)
        raise InvalidRedisUrlError(shown, f"scheme {parts.scheme!r} is not one of {allowed}")
    if scheme == "unix":
        if not parts.path:
            raise InvalidRedisUrlError(shown, "no socket path (expected unix:///path/to.sock)")
    else:
        if not parts.hostname:
            raise InvalidRedisUrlError(shown, "no host (expected redis://host:port/db)")
        if port == 0:
            raise InvalidRedisUrlError(shown, "port 0 is not a port a server listens on")
        _check_db(shown, parts.path.lstrip("/"), "path")
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() == "db":
            _check_db(shown, value, "db= query parameter")
    return url


def _check_db(shown: str, text: str, where: str) -> None:
    if text and not (text.isascii() and text.isdigit()):
        raise InvalidRedisUrlError(
            shown, f"database {text!r} in the {where} is not an integer >= 0"
        )


def classify_redis_error(err: BaseException) -> RedisErrorKind:
    """What a Redis error means: `auth` (the server refuses these credentials: a
    configuration error, retrying cannot help), `unreachable` (no answer: refused, reset,
    timed out, still loading; an outage) or `other` (the server answered with an error)."""
    if isinstance(err, (redis.AuthenticationError, redis.exceptions.AuthorizationError)):
        return "auth"  # both subclass ConnectionError: test them first
    if isinstance(err, redis.exceptions.NoPermissionError):
        return "auth"
    if isinstance(err, redis.ResponseError) and _is_auth_reply(str(err)):
        return "auth"
    if isinstance(err, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return "unreachable"
    return "other"


def _is_auth_reply(message: str) -> bool:
    # A pipeline prefixes the reply with "Command # 1 (...) of pipeline caused error: ".
    reply = message.rpartition("caused error: ")[2].lstrip()
    return reply.startswith(_AUTH_REPLIES)


def probe_redis(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Whether a Redis server answers PING at `url` ("auth": it does, but refuses us)."""
    client = make_client(url, socket_timeout_s=timeout_s, connect_timeout_s=timeout_s)
    try:
        client.ping()
        return "up"
    except (redis.RedisError, OSError) as err:
        return "auth" if classify_redis_error(err) == "auth" else "down"
    finally:
        client.close()
