"""Fixtures of the sensor tests: a real Redis (the `redis_url` fixture) and a real Dagster
instance. The Redis server may be shared, so tests only look at their own run ids, and
`track` / `new_run_id` remove those runs' keys and events afterwards."""

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import redis

from tinyexp_core.progress import ACTIVE_RUNS_KEY, EVENTS_STREAM, read_events, run_key
from tinyexp_core.services.lifecycle import free_port
from tinyexp_core.services.redis_client import make_client
from tinyexp_dagster.definitions import defs
from tinyexp_dagster.resources import RedisProgressResource, StallSettingsResource, StorageResource


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = make_client(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def track(client: redis.Redis) -> Iterator[Callable[[str], str]]:
    """Registers run ids whose hashes, set membership and events go afterwards."""
    made: list[str] = []

    def add(run_id: str) -> str:
        made.append(run_id)
        return run_id

    yield add
    for rid in made:
        client.delete(run_key(rid))
        client.srem(ACTIVE_RUNS_KEY, rid)
    stale = [eid for eid, f in read_events(client, count=100_000) if f.get("run_id") in made]
    if stale:
        client.xdel(EVENTS_STREAM, *stale)


@pytest.fixture
def new_run_id(track: Callable[[str], str]) -> Callable[[], str]:
    """Makes unique run ids (cleaned up like `track`'s)."""
    return lambda: track(str(uuid.uuid4()))


@pytest.fixture
def instance() -> dg.DagsterInstance:
    """A real Dagster instance (in memory: run and event storage as the daemon sees them)."""
    return dg.DagsterInstance.ephemeral()


@pytest.fixture
def resources(redis_url: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "redis": RedisProgressResource(url=redis_url),
        "storage": StorageResource(root=str(tmp_path / "storage")),
        "stalls": StallSettingsResource(after_s=60),
    }


@pytest.fixture
def down_resources(tmp_path: Path) -> dict[str, Any]:
    """Resources whose Redis URL is a free port: nothing listens there."""
    return {
        "redis": RedisProgressResource(url=f"redis://127.0.0.1:{free_port()}/0"),
        "storage": StorageResource(root=str(tmp_path / "storage")),
        "stalls": StallSettingsResource(after_s=60),
    }


@pytest.fixture(scope="module")
def pipeline_job() -> dg.JobDefinition:
    return defs.resolve_job_def("mnist_training_pipeline")
