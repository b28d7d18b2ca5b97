"""A process that imported tinyexp_dagster freezes its heap as its last exit handler, so
Python's final collections skip it (tinyexp_dagster/quick_exit.py)."""

from __future__ import annotations

import subprocess
import sys

# An exit handler registered before the import runs after the package's (last in, first
# out): it sees the heap frozen, or not.
CODE = """
import atexit, gc
atexit.register(lambda: print("frozen objects at exit:", gc.get_freeze_count()))
{imports}
leftover = [[] for _ in range(1000)]
"""


def _frozen_at_exit(imports: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CODE.format(imports=imports)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return int(out.strip().rsplit(" ", 1)[-1])


def test_the_heap_is_frozen_for_the_exit_only_after_importing_the_package() -> None:
    assert _frozen_at_exit("import json") == 0
    assert _frozen_at_exit("import tinyexp_dagster") > 1000
