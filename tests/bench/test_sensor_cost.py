"""The sensor benchmark refuses memory file systems for its SQLite case."""

from __future__ import annotations

import pytest

from bench import sensor_cost


def test_filesystem_type_reads_the_mount_table() -> None:
    assert sensor_cost.filesystem_type("/proc/self") == "proc"


def test_sqlite_on_a_memory_filesystem_is_refused(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(sensor_cost, "filesystem_type", lambda path: "tmpfs")
    with pytest.raises(RuntimeError, match="tmpfs"):
        with sensor_cost.instance_on("sqlite", str(tmp_path)):
            pass
