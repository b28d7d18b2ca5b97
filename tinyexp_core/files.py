"""Files: the one atomic write (and its unhashed copy) and the one sha256 of a file.

An atomic write goes to a temp file in the target's directory (so the final `os.replace` is a
same-filesystem rename), is fsynced, then replaces the target; a reader sees the old bytes or
the new ones, never half of them. Temp names start with "." and end with `.tmp-<pid>`, so a
leftover never matches a pattern such as `*.pt` or `*.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_copy",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "sha256_file",
    "temp_path",
]

CHUNK_BYTES = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def temp_path(path: str | Path) -> Path:
    """The temp file an atomic write of `path` uses: `.<name>.tmp-<pid>` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(directory: str | Path) -> None:
    """Fsync a directory so a rename inside it is durable (best effort)."""
    # Some platforms and filesystems cannot open or fsync a directory; the file data itself
    # is fsynced already, so failing here loses at most the rename on a power cut.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _HashingWriter:
    """A write-only, append-only view of a file that hashes and counts what passes through,
    so an atomic write knows its sha256 without reading the file back. A seek back (other
    than a restart from 0) fails loudly instead of leaving a wrong digest."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._digest.update(data)
        self.size += len(memoryview(data).cast("B"))
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """`seek(0)` starts over (the file is emptied, the hash restarts); a seek by 0 from
        here or from the end stays put; anything else would make the hash wrong."""
        if (offset, whence) == (0, os.SEEK_SET):
            self._f.seek(0)
            self._f.truncate()
            self._digest, self.size = hashlib.sha256(), 0
        elif offset != 0 or whence not in (os.SEEK_CUR, os.SEEK_END):
            raise io.UnsupportedOperation("an atomic write is append-only: no seek back")
        return self.size

    def fileno(self) -> int:  # for os.fsync; bytes written around the wrapper fail the write
        return self._f.fileno()

    def writable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], None], *, mode: int | None = None
) -> tuple[str, int]:
    """Call `write(f)` on a temp file, fsync it, replace `path`; return (sha256, size).

    `f` is append-only (write, flush, tell, fileno; `seek(0)` starts over): the sha256
    and size are of the bytes written, hashed on their way to the file (no second read).
    `mode` (e.g. 0o600) sets the permissions from creation on, so a secret is never
    readable by others, not even for a moment. On any error (and on KeyboardInterrupt) the
    temp file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = temp_path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(tmp, flags, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            hashing = _HashingWriter(f)
            write(hashing)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        on_disk = tmp.stat().st_size
        if hashing.size != on_disk:  # something wrote around the wrapper
            raise OSError(f"{tmp}: wrote {hashing.size} bytes, the file has {on_disk}")
        sha, size = hashing.hexdigest(), hashing.size
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return sha, size


def atomic_copy(src: str | Path, dst: str | Path, expected_size: int) -> None:
    """Copy `src` to a temp file in the kernel (no pass through Python: `shutil.copyfile`'s
    sendfile on Linux), fsync it, check it holds `expected_size` bytes, replace `dst`. Not
    hashed: for copies of a file whose sha256 its writer has just recorded (see
    `checkpoint.copy_checkpoint`). On any error the temp file is removed, `dst` untouched."""
    src, dst = Path(src), Path(dst)
    tmp = temp_path(dst)
    try:
        shutil.copyfile(src, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        size = tmp.stat().st_size
        if size != expected_size:
            raise OSError(f"{tmp}: copied {size} bytes of {src}, expected {expected_size}")
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Atomically replace `path` with `data`."""
    atomic_write(path, lambda f: f.write(data), mode=mode)


def atomic_write_text(path: str | Path, text: str, *, mode: int | None = None) -> None:
    """Atomically replace `path` with `text`, UTF-8 encoded."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
