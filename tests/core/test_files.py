"""tinyexp_core.files: the one atomic write and sha256 of the project."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from tinyexp_core.files import (
    atomic_copy,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    sha256_file,
)


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) + 123)  # more than one read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_atomic_write_returns_sha_and_size_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    sha, size = atomic_write(path, lambda f: f.write(b"new bytes"))
    assert path.read_bytes() == b"new bytes"
    assert (sha, size) == (hashlib.sha256(b"new bytes").hexdigest(), 9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_failing_writer_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    atomic_write_text(path, '{"v": 1}')

    def half(f) -> None:
        f.write(b'{"v": 2')
        raise KeyboardInterrupt("stopped mid-write")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half)
    assert path.read_text() == '{"v": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_mode_applies_from_creation(tmp_path: Path) -> None:
    path = tmp_path / "secret.conf"
    atomic_write_bytes(path, b"requirepass x\n", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"requirepass x\n"


def test_temp_file_sits_beside_the_target_with_a_hidden_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(os.fspath(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write_text(tmp_path / "a.pt", "x")
    [src] = seen
    assert Path(src).parent == tmp_path
    assert Path(src).name.startswith(".a.pt.tmp-") and not src.endswith(".pt")


def test_atomic_copy_replaces_or_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old")
    with pytest.raises(OSError, match="expected 5"):
        atomic_copy(src, dst, 5)  # a copy of the wrong size is never renamed into place
    assert dst.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]
    atomic_copy(src, dst, 3000)
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]
