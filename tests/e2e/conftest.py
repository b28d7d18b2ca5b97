"""Fixtures of the end-to-end tests: a fresh Dagster instance and storage root per test,
the environment the real programs get, where artifacts go, and the browser.

Each test runs the programs a user runs (`dagster dev`, `dagster job execute`,
`dagster-daemon`, `ray start`) in subprocesses and stops them in `finally`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO_ROOT, subprocess_env

CHROMIUM_ENV = "TINYEXP_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Chromium in a container, offline: no sandbox (root), no GPU, no background traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Inherited settings that would point the programs at another deployment.
_INHERITED_TO_DROP = ("RAY_ADDRESS", "DAGSTER_HOME", "DAGSTER_POSTGRES_URL")


@dataclass
class E2EDeployment:
    """One isolated deployment: its DAGSTER_HOME, storage root, environment, logs dir."""

    home: Path
    storage_root: Path
    logs: Path
    env: dict[str, str]

    def instance(self):
        """The Dagster instance the programs write to (close it: use as a context manager)."""
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.home))


@pytest.fixture
def deployment(tmp_path: Path, redis_url: str) -> Iterator[E2EDeployment]:
    """A temporary DAGSTER_HOME (empty dagster.yaml: SQLite), storage root and environment:
    progress to the test Redis by URL, a local Ray per run with 2 workers."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    storage = tmp_path / "storage"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = subprocess_env()
    for name in _INHERITED_TO_DROP:
        env.pop(name, None)
    for name in [k for k in env if k.startswith("TINYEXP_") and not k.startswith("TINYEXP_TEST")]:
        env.pop(name)
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "TINYEXP_STORAGE_ROOT": str(storage),
            "TINYEXP_REDIS_URL": redis_url,
            "TINYEXP_NUM_WORKERS": "2",
        }
    )
    yield E2EDeployment(home=home, storage_root=storage, logs=logs, env=env)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """`test-artifacts/` at the repository root (git-ignored): screenshots and logs to keep."""
    path = REPO_ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's Chromium (Playwright's own download needs the internet). Missing is a setup
    error, not a reason to skip: `make test-e2e` installs it."""
    path = os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"no Chromium at {path}: run scripts/install_chromium.sh (apt-get install chromium) "
            f"or set {CHROMIUM_ENV} to a Chromium executable"
        )
    return path
