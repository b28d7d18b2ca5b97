"""tinyexp_core.services.redis_client: the one Redis error classifier (unit), and it against a real
server that requires a password."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import AuthorizationError, BusyLoadingError, NoPermissionError

from tinyexp_core.services.lifecycle import free_port
from tinyexp_core.services.redis_client import classify_redis_error, make_client, probe_redis
from tinyexp_core.services.redis_cluster import RedisClusterManager


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        # The server refuses the credentials: a configuration error.
        (redis.AuthenticationError("invalid username-password pair"), "auth"),
        (AuthorizationError("not allowed"), "auth"),
        (NoPermissionError("this user has no permissions to run the 'hset' command"), "auth"),
        (redis.ResponseError("NOAUTH Authentication required."), "auth"),
        (redis.ResponseError("WRONGPASS invalid username-password pair"), "auth"),
        (redis.ResponseError("invalid password"), "auth"),
        (
            redis.ResponseError(
                "Command # 1 (HSET tinyexp:run:x status running) of pipeline caused error: "
                "NOAUTH Authentication required."
            ),
            "auth",
        ),
        # No answer: an outage.
        (
            redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
            "unreachable",
        ),
        (redis.TimeoutError("Timeout reading from socket"), "unreachable"),
        (BusyLoadingError("Redis is loading the dataset in memory"), "unreachable"),
        (ConnectionResetError(104, "Connection reset by peer"), "unreachable"),
        (TimeoutError("timed out"), "unreachable"),
        # The server answered with another error.
        (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), "other"),
        (redis.ResponseError("ERR unknown command 'FOO'"), "other"),
        (redis.exceptions.DataError("Invalid input of type: 'dict'"), "other"),
        (ValueError("not a redis error"), "other"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value,
)
def test_classify_redis_error(err: BaseException, kind: str) -> None:
    assert classify_redis_error(err) == kind


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server that requires the password `s3cret`; yields its URL without one."""
    data_dir: Path = tmp_path_factory.mktemp("redis-auth")
    with RedisClusterManager(password="s3cret", data_dir=str(data_dir)) as cluster:
        yield f"redis://127.0.0.1:{cluster.ports[0]}/0"


def _error_of(url: str) -> BaseException:
    client = make_client(url)
    try:
        pipe = client.pipeline(transaction=True)
        pipe.hset("tinyexp:classifier-test", "k", "v")
        pipe.execute()
    except Exception as err:  # what the progress writers and sensors see
        return err
    finally:
        client.close()
    raise AssertionError(f"{url} accepted the write")


def test_real_replies_classify(password_server: str) -> None:
    port = password_server.rsplit(":", 1)[1].split("/")[0]
    no_password = _error_of(password_server)
    wrong_password = _error_of(f"redis://:wrong@127.0.0.1:{port}/0")
    nobody = _error_of(f"redis://127.0.0.1:{free_port()}/0")
    assert classify_redis_error(no_password) == "auth"  # NOAUTH: redis-py strips the code
    assert classify_redis_error(wrong_password) == "auth"
    assert classify_redis_error(nobody) == "unreachable"
    assert probe_redis(password_server) == "auth"
    assert probe_redis(f"redis://:s3cret@127.0.0.1:{port}/0") == "up"
    assert probe_redis(f"redis://127.0.0.1:{free_port()}/0") == "down"
