"""Service fixtures shared by all tests: one local Ray and one Redis per test session.

Redis: `TINYEXP_TEST_REDIS_URL` (CI points it at the machine's server) or else the
project's embedded server, started here and stopped after. Postgres deployment tests
read `TINYEXP_TEST_POSTGRES_URL` and skip, saying so, when it is unset.

At its end the session fails if a redis-server, Ray, Dagster or worker process that it
started is still alive after a grace period (see tests/leftovers.py); before that check, the
embedded Redis servers that tests started under the session's temporary directories (every
run on a temporary storage root starts one, and by design it outlives the run until idle)
are stopped, and so are the default local Rays (`tinyexp_core.services.ray_head`) that runs
left warm there. Those stop themselves after `TINYEXP_RAY_IDLE_STOP_S`, which the session
sets short (each test has its own storage root, so a warm Ray is never reused across tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import leftovers

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TINYEXP_RAY_IDLE_STOP_S", "10")
_SNAPSHOT_KEY = pytest.StashKey[leftovers.Snapshot]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_SNAPSHOT_KEY] = leftovers.start_session()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session, naming them, if processes it started are still alive."""
    snap = session.config.stash.get(_SNAPSHOT_KEY, None)
    if snap is None:
        return
    grace_s = float(os.environ.get(leftovers.ENV_GRACE_S) or leftovers.GRACE_S)
    left = leftovers.wait_for_leftovers(snap, grace_s)
    if not left:
        return
    lines = leftovers.describe(left)
    leftovers.kill(left)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    header = (
        f"{len(left)} process(es) started by this test session outlived it "
        f"(waited {grace_s:g} s; now killed):"
    )
    if reporter is not None:
        reporter.write_sep("=", "leftover processes", red=True)
        for line in [header, *lines]:
            reporter.write_line(line, red=True)
    else:
        print("\n".join([header, *lines]))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _embedded_roots(
    base: Path, marker: str = "redis/redis.pid", max_depth: int = 4
) -> Iterator[Path]:
    """Storage roots under `base` (a few levels deep) with `marker` (by default an embedded
    Redis's pid file)."""
    for depth in range(max_depth):
        pattern = "/".join(["*"] * depth + [marker])
        for pid_file in base.glob(pattern):
            yield pid_file.parent.parent


@pytest.fixture(scope="session", autouse=True)
def stop_embedded_redis_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Stop every embedded Redis left running under this session's temporary directories."""
    yield
    from tinyexp_core.services.embedded_redis import EmbeddedRedis

    for root in _embedded_roots(tmp_path_factory.getbasetemp()):
        EmbeddedRedis(root).stop()


@pytest.fixture(scope="session", autouse=True)
def stop_ray_heads_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Stop every default local Ray that runs left warm under the session's temporary dirs."""
    yield
    from tinyexp_core.services.ray_head import stop_head

    base = tmp_path_factory.getbasetemp()
    roots = {r for n in ("address", "starting") for r in _embedded_roots(base, f"ray/{n}")}
    for root in roots:
        stop_head(root)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real Redis URL: the configured test server or a project-embedded one."""
    url = os.environ.get("TINYEXP_TEST_REDIS_URL")
    if url:
        yield url
        return
    from tinyexp_core.services.embedded_redis import EmbeddedRedis
    from tinyexp_core.services.redis_idle import add_holder

    server = EmbeddedRedis(tmp_path_factory.mktemp("embedded-redis"))
    url = server.ensure()
    # Tests use it on and off for the whole session: hold it, or its idle watcher would stop
    # it during a long stretch of tests that do not touch Redis.
    add_holder(server.holders_dir, os.getpid(), started=True)
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
            # A new local Ray, never one another process left in /tmp/ray/ray_current_cluster
            # (a multi-node test cluster, a `ray start`).
            address="local",
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
