"""Service fixtures shared by all tests: one local Ray and one Redis per test session.

Redis: `TINYEXP_TEST_REDIS_URL` (CI points it at the machine's server) or else the
project's embedded server, started here and stopped after. Postgres deployment tests
read `TINYEXP_TEST_POSTGRES_URL` and skip, saying so, when it is unset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real Redis URL: the configured test server or a project-embedded one."""
    url = os.environ.get("TINYEXP_TEST_REDIS_URL")
    if url:
        yield url
        return
    from tinyexp_core.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("embedded-redis"))
    url = server.ensure()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray (2 CPUs, loopback) for the whole session; launchers reuse it."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
            object_store_memory=256 * 1024 * 1024,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_prepared(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The default digits dataset, prepared once per session; returns its directory."""
    from tinyexp_core.data import load_source, prepare_dataset

    root = tmp_path_factory.mktemp("datasets")
    return prepare_dataset(load_source("digits"), root).path


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    root.mkdir()
    return root
