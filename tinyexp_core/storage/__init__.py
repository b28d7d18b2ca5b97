"""The storage root: a local path (used as it is) or an object-store URI mirrored per node.

Code that writes files keeps writing local paths; with a remote root those paths lie in
this node's mirror (`location.local_path`), and the few boundaries call in here:

- `localize(location)`: a URI (file or folder) downloaded into this node's mirror,
  verified, and its local path; a local path as it is (no fsspec on that path).
- `fetch_mirror(directory)`: refresh a mirror folder from the bucket (a resume on any node).
- `publish(path)`: a file or folder of the mirror uploaded now (run records, datasets).
- `uploader_for(path)`: the process's background uploader when `path` is in the mirror,
  else None (a local root uploads nothing): checkpoints.
- `check_storage(root)`: the preflight, before Ray starts.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from tinyexp_core.storage.check import check_storage
from tinyexp_core.storage.errors import (
    ObjectIncompleteError,
    StorageError,
    StorageUnreachableError,
    UploadFailedError,
)
from tinyexp_core.storage.location import (
    ENV_NODE_CACHE,
    is_remote,
    local_path,
    node_cache_dir,
    to_uri,
)
from tinyexp_core.storage.uploader import RetryPolicy, Uploader

__all__ = [
    "ENV_NODE_CACHE",
    "ObjectIncompleteError",
    "RetryPolicy",
    "StorageError",
    "StorageUnreachableError",
    "UploadFailedError",
    "Uploader",
    "check_storage",
    "fetch_mirror",
    "is_remote",
    "local_path",
    "localize",
    "localize_dataset",
    "node_cache_dir",
    "publish",
    "to_uri",
    "uploader_for",
]

_uploader: Uploader | None = None
_uploader_lock = threading.Lock()


def localize(location: str | os.PathLike[str]) -> Path:
    """The local path of `location`; a remote file or folder is fetched into the mirror
    first (a folder: every complete object under it)."""
    text = os.fspath(location)
    if not is_remote(text):
        return local_path(text)
    from tinyexp_core.storage.store import SIDECAR_SUFFIX, open_store

    store = open_store(text)
    if store.exists(text + SIDECAR_SUFFIX):
        return store.fetch(text)
    return store.fetch_tree(text)


def localize_dataset(location: str | os.PathLike[str], manifest_name: str) -> Path:
    """The local folder of a prepared dataset (its folder, or its manifest file) on this node:
    a remote one fetched whole into the mirror (every file verified), a local one as it is."""
    text = os.fspath(location)
    if not is_remote(text):
        return Path(text)
    folder = text.rstrip("/")
    if folder.endswith("/" + manifest_name):
        folder = folder[: -len(manifest_name) - 1]
    localized = localize(folder)
    return localized / manifest_name if text.rstrip("/") != folder else localized


def fetch_mirror(directory: str | os.PathLike[str]) -> bool:
    """Bring a mirror folder up to date from the bucket; False (nothing done) when the
    folder is not in this node's mirror (a local root)."""
    uri = to_uri(directory)
    if not is_remote(uri):
        return False
    from tinyexp_core.storage.store import open_store

    open_store(uri).fetch_tree(uri, directory)
    return True


def publish(path: str | os.PathLike[str]) -> list[str]:
    """Upload a mirror file or folder now (with sidecars); [] for a path outside the mirror."""
    uri = to_uri(path)
    if not is_remote(uri):
        return []
    from tinyexp_core.storage.store import open_store

    store = open_store(uri)
    if Path(path).is_dir():
        return store.publish_tree(path, uri)
    store.publish(path, uri)
    return [uri]


def uploader_for(path: str | os.PathLike[str]) -> Uploader | None:
    """This process's background uploader when `path` is in the mirror, else None."""
    global _uploader
    uri = to_uri(path)
    if not is_remote(uri):
        return None
    with _uploader_lock:
        if _uploader is None:
            from tinyexp_core.storage.store import open_store

            _uploader = Uploader(open_store(uri))
        return _uploader


def set_uploader(uploader: Uploader | None) -> None:
    """Replace the process's uploader (a retry policy of one's own: tests, benchmarks); the
    one replaced ends its worker process once its queue is done."""
    global _uploader
    with _uploader_lock:
        old, _uploader = _uploader, uploader
    if old is not None and old is not uploader:
        old.shutdown()
