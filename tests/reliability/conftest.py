"""Fixtures of the reliability tests: a Dagster instance, a storage root holding the prepared
digits data, and fault hooks reset after every test."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tests.reliability.support import HOOKS, REDIS_PASSWORD, copy_prepared


@pytest.fixture
def instance(tmp_path: Path):
    """A real (SQLite) Dagster instance in a temporary DAGSTER_HOME."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture
def launching_instance(tmp_path: Path):
    """A SQLite instance that launches submitted runs at once (DefaultRunCoordinator), as
    the daemon would after dequeuing them; cancel_run is DefaultRunLauncher.terminate in
    both cases once a run has started."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    overrides = {
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "DefaultRunCoordinator",
        }
    }
    with dg.instance_for_test(temp_dir=str(home), overrides=overrides) as inst:
        yield inst


@pytest.fixture
def storage(storage_root: Path, digits_prepared: str) -> Path:
    """A storage root whose `datasets/` already holds the session's prepared digits, so
    `prepared_dataset` finds it valid and reuses it instead of preparing it again."""
    copy_prepared(digits_prepared, storage_root)
    return storage_root


@pytest.fixture(scope="session")
def password_redis():
    """A Redis shard of our own that requires a password; yields its URL (with it)."""
    from tinyexp_core.services.redis_cluster import RedisClusterManager

    with RedisClusterManager(password=REDIS_PASSWORD) as manager:
        yield manager.urls[0]


@pytest.fixture(autouse=True)
def _reset_hooks():
    yield
    HOOKS.on_started = None
