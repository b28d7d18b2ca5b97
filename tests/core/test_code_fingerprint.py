"""The code fingerprint (tinyexp_core.services.code_fingerprint): what a warm rank and the
driver compare to tell whether they run the same tinyexp files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import tinyexp_core
from tinyexp_core.services.code_fingerprint import (
    PACKAGES,
    code_fingerprint,
    fingerprint_of,
    package_dir,
)


@pytest.fixture
def pkg(tmp_path, monkeypatch) -> Path:
    """A package `fp_demo_pkg` on sys.path (found, never imported)."""
    root = tmp_path / "fp_demo_pkg"
    (root / "sub").mkdir(parents=True)
    for rel in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py"):
        (root / rel).write_text(f"# {rel}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return root


def fp() -> str:
    return fingerprint_of(["fp_demo_pkg"])


def test_stable_while_nothing_changes(pkg):
    first = fp()
    assert fp() == first
    (pkg / "notes.txt").write_text("not code")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.py").write_text("# not a source file")
    os.utime(pkg / "sub", ns=(1, 1))  # a directory's times are not the code
    assert fp() == first
    assert "fp_demo_pkg" not in sys.modules, "fingerprinting must not import the package"


def test_changes_with_a_files_mtime_and_back(pkg):
    first = fp()
    st = os.stat(pkg / "sub" / "b.py")
    os.utime(pkg / "sub" / "b.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert fp() != first
    os.utime(pkg / "sub" / "b.py", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fp() == first


def test_changes_with_a_files_size_at_the_same_mtime(pkg):
    first = fp()
    st = os.stat(pkg / "a.py")
    (pkg / "a.py").write_text("# a.py, edited\n")
    os.utime(pkg / "a.py", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fp() != first


def test_changes_when_a_file_comes_or_goes(pkg):
    first = fp()
    (pkg / "c.py").write_text("")
    with_c = fp()
    assert with_c != first
    (pkg / "c.py").unlink()
    assert fp() == first


def test_changes_with_where_the_package_is(pkg, tmp_path, monkeypatch):
    """The same files elsewhere (another checkout) are other code."""
    first = fp()
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.rename(pkg, other / "fp_demo_pkg")
    monkeypatch.syspath_prepend(str(other))
    assert package_dir("fp_demo_pkg") == other / "fp_demo_pkg"
    assert fp() != first


def test_the_process_fingerprint_is_of_the_imported_tinyexp():
    assert package_dir("tinyexp_core") == Path(tinyexp_core.__file__).resolve().parent
    assert package_dir("no_such_package_here") is None
    assert PACKAGES == ("tinyexp_core", "tinyexp_dagster")
    assert code_fingerprint() == code_fingerprint()  # taken once per process
    assert len(code_fingerprint()) == 16
