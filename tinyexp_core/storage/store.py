"""Objects in a remote storage root: put and get files with a sha256 sidecar, verified.

An object `<uri>` is complete only once its sidecar `<uri>.sha256` (JSON: sha256, size)
exists and matches its bytes. The sidecar is written after the object (one S3 PUT is
atomic per object), so an upload cut short leaves an object without a sidecar or with the
old one: `fetch` refuses both (`ObjectIncompleteError`), never taking half a checkpoint.
Credentials and endpoint come from the standard environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...): fsspec's backends read them there, and
nothing here writes them anywhere.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from loguru import logger

from tinyexp_core.files import sha256_file, temp_path
from tinyexp_core.storage.errors import ObjectIncompleteError
from tinyexp_core.storage.location import _split, local_path

__all__ = ["ObjectStore", "SIDECAR_SUFFIX", "open_store"]

SIDECAR_SUFFIX = ".sha256"
_stores: dict[tuple[str, bool], ObjectStore] = {}
_stores_lock = threading.Lock()


def _options(scheme: str, *, probe: bool) -> dict[str, Any]:
    """fsspec options: short timeouts (a probe fails in seconds, not after minutes of the
    backend's own retries: ours retry with backoff), no listing cache (another node writes)."""
    if scheme not in ("s3", "s3a"):
        return {}
    config: dict[str, Any] = {
        "connect_timeout": 3 if probe else 10,
        "read_timeout": 10 if probe else 60,
        "retries": {"max_attempts": 1 if probe else 3, "mode": "standard"},
    }
    options: dict[str, Any] = {
        "config_kwargs": config,
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:  # botocore reads it too; s3fs's own code paths want it explicitly
        options["endpoint_url"] = endpoint
    return options


def open_store(uri: str, *, probe: bool = False) -> ObjectStore:
    """The store serving `uri`'s scheme in this process (one fsspec filesystem each)."""
    parts = _split(uri)
    if parts is None:
        raise ValueError(f"not a URI: {uri!r}")
    key = (parts[0], probe)
    with _stores_lock:
        if key not in _stores:
            import fsspec

            _stores[key] = ObjectStore(
                fsspec.filesystem(parts[0], **_options(parts[0], probe=probe))
            )
        return _stores[key]


def reset_stores() -> None:
    """Forget the open filesystems (the environment's endpoint or keys changed: tests)."""
    with _stores_lock:
        _stores.clear()


def _sidecar_json(sha: str, size: int) -> bytes:
    return json.dumps({"sha256": sha, "size": size}, indent=1).encode()


def local_sidecar(path: Path) -> tuple[str, int] | None:
    """(sha256, size) from a local file's sidecar when it describes the file as it is."""
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    try:
        meta = json.loads(sidecar.read_text())
        sha, size = str(meta["sha256"]), int(meta["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        return (sha, size) if path.stat().st_size == size else None
    except OSError:
        return None


class ObjectStore:
    """One fsspec filesystem, with the verified put/get the storage root needs."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(uri))

    def read_bytes(self, uri: str) -> bytes:
        return bytes(self.fs.cat_file(uri))

    def write_bytes(self, uri: str, data: bytes) -> None:
        self.fs.pipe_file(uri, data)

    def remove(self, uri: str) -> None:
        self.fs.rm_file(uri)

    def list_files(self, prefix_uri: str) -> list[str]:
        """Every object under `prefix_uri`, as URIs; [] when there is none."""
        scheme = _split(prefix_uri)[0]  # type: ignore[index]
        try:
            found = self.fs.find(prefix_uri.rstrip("/") + "/")
        except FileNotFoundError:
            return []
        return [f"{scheme}://{p}" if "://" not in p else p for p in found]

    def publish(self, path: str | Path, uri: str, known: tuple[str, int] | None = None) -> str:
        """Upload a local file to `uri`, then its sidecar; return its sha256. `known` (sha256,
        size), else the file's own sidecar (a checkpoint's) when it matches the size, is
        trusted; otherwise the file is hashed."""
        path = Path(path)
        known = known or local_sidecar(path)
        sha, size = known if known is not None else (sha256_file(path), path.stat().st_size)
        self.fs.put_file(str(path), uri)
        self.fs.pipe_file(uri + SIDECAR_SUFFIX, _sidecar_json(sha, size))
        return sha

    def remote_sha(self, uri: str) -> tuple[str, int]:
        """(sha256, size) the object's sidecar records; ObjectIncompleteError without one."""
        try:
            meta = json.loads(self.fs.cat_file(uri + SIDECAR_SUFFIX))
            return str(meta["sha256"]), int(meta["size"])
        except FileNotFoundError:
            raise ObjectIncompleteError(uri, "no sha256 sidecar (upload not finished)") from None
        except (ValueError, KeyError, TypeError) as err:
            raise ObjectIncompleteError(uri, f"sha256 sidecar unreadable: {err!r}") from None

    def fetch(self, uri: str, path: str | Path | None = None) -> Path:
        """Download `uri` to `path` (default: its place in this node's mirror), verified
        against its sidecar; a local copy that already matches is kept (the node cache)."""
        path = Path(path) if path is not None else local_path(uri)
        sha, size = self.remote_sha(uri)
        if local_sidecar(path) == (sha, size):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            self.fs.get_file(uri, str(tmp))
            got_size = tmp.stat().st_size
            got_sha = sha256_file(tmp) if got_size == size else ""
            if (got_sha, got_size) != (sha, size):
                raise ObjectIncompleteError(
                    uri,
                    f"got {got_size} bytes sha256 {got_sha or '-'}, sidecar says "
                    f"{size} bytes sha256 {sha}",
                )
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        side_tmp = temp_path(sidecar)
        side_tmp.write_bytes(_sidecar_json(sha, size))
        os.replace(side_tmp, sidecar)
        return path

    def fetch_tree(self, prefix_uri: str, directory: str | Path | None = None) -> Path:
        """Every complete object under `prefix_uri` into `directory` (default: the mirror);
        objects still without a sidecar (being uploaded) or not matching it are left out."""
        directory = Path(directory) if directory is not None else local_path(prefix_uri)
        base = prefix_uri.rstrip("/") + "/"
        names = self.list_files(prefix_uri)
        present = set(names)
        for uri in names:
            if uri.endswith(SIDECAR_SUFFIX) or uri + SIDECAR_SUFFIX not in present:
                continue
            relative = uri[len(base) :] if uri.startswith(base) else Path(uri).name
            try:
                self.fetch(uri, directory / relative)
            except ObjectIncompleteError as err:  # the others may do (older checkpoints)
                logger.warning("left out of {}: {}", directory, err)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def publish_tree(self, directory: str | Path, prefix_uri: str) -> list[str]:
        """Upload every file under `directory` (not temp files, not sidecars) with its sidecar."""
        directory = Path(directory)
        published = []
        for path in sorted(directory.rglob("*")):
            if (
                not path.is_file()
                or path.name.startswith(".")
                or path.name.endswith(SIDECAR_SUFFIX)
            ):
                continue
            uri = prefix_uri.rstrip("/") + "/" + path.relative_to(directory).as_posix()
            self.publish(path, uri)
            published.append(uri)
        return published
