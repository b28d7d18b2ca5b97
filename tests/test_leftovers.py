"""The end-of-session leftover check itself: a pytest session whose test leaves a detached
process behind fails, naming it, and the process is ended; a clean session passes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
CONFTEST = "from tests.conftest import pytest_sessionfinish, pytest_sessionstart  # noqa: F401\n"
TESTS = """
import subprocess, sys

def test_clean():
    pass

def test_leaks():
    # Detached through a shell that exits: re-parented, so only the session's mark in its
    # environment ties it to the session.
    cmd = f'"{sys.executable}" -c "import time; time.sleep(120)" {TAG} >/dev/null 2>&1 &'
    subprocess.run(["/bin/sh", "-c", cmd], check=True)
"""


def _session(tmp_path: Path, tag: str, selection: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_inner.py").write_text(f"TAG = {tag!r}\n" + TESTS)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TINYEXP_TEST_LEFTOVER_GRACE_S": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection]
    return subprocess.run(
        [*command, "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _alive_with(tag: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if tag in " ".join(proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def test_a_session_that_leaves_a_process_fails_naming_it(tmp_path: Path) -> None:
    tag = f"tinyexp-leak-{uuid.uuid4().hex[:8]}"
    done = _session(tmp_path, tag, "leaks")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "leftover processes" in done.stdout and tag in done.stdout, done.stdout
    assert not _alive_with(tag)  # the check ended it


def test_a_clean_session_passes(tmp_path: Path) -> None:
    done = _session(tmp_path, "unused", "clean")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "leftover processes" not in done.stdout
