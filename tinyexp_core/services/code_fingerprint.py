"""Which tinyexp code a process runs, as one short string: two processes with the same
fingerprint loaded the same files (as far as size and mtime tell).

A process that lives across a code change (a warm rank started before a `pip install -U`,
or before an edit in an editable install) keeps the modules it imported before; a process
started after imports the new ones. `code_fingerprint()` is taken once per process, early
(a warm rank takes it as it warms up), and compared across processes (`ray_pool`): sha256
over each package's directory and, for each of its `.py` files, the relative path, size
and mtime_ns. It reads no file's content: a stat per file (~160 files, a few ms).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

PACKAGES = ("tinyexp_core", "tinyexp_dagster")


@functools.cache
def code_fingerprint() -> str:
    """The fingerprint of `PACKAGES` as this process first saw them (taken once)."""
    return fingerprint_of(PACKAGES)


def fingerprint_of(packages: Iterable[str]) -> str:
    """The fingerprint of `packages` on disk now: where each one is, and the path, size and
    mtime of each of its `.py` files."""
    digest = hashlib.sha256()
    for name in packages:
        root = package_dir(name)
        digest.update(f"{name}\0{root}\n".encode())
        if root is not None:
            for rel, size, mtime_ns in _py_files(root):
                digest.update(f"{rel}\0{size}\0{mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def package_dir(name: str) -> Path | None:
    """The directory of package `name`: the one this process imported, else the one an
    import would find now (found without importing it); None when there is none."""
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        origin = None if spec is None else spec.origin
    return None if origin is None else Path(origin).resolve().parent


def _py_files(root: Path) -> list[tuple[str, int, int]]:
    """(path relative to `root`, size, mtime_ns) of the `.py` files under `root`, sorted."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(directory, file)
            try:
                st = os.stat(path)
            except OSError:  # removed while we walked: counts as gone
                continue
            found.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
    return sorted(found)
