"""Where a storage root lives: a local path, or an object-store URI mirrored per node.

A local root (a path, or `file://...`) is used as it is: no fsspec, no copy, today's speed.
A remote root (`s3://bucket/prefix`, `gs://...`, anything fsspec opens) is mirrored on
each node under its node cache (`$TINYEXP_NODE_CACHE`, else `~/.cache/tinyexp/storage`):
`s3://bucket/prefix/runs/r1/x.pt` <-> `<node cache>/s3/bucket/prefix/runs/r1/x.pt`.
The mapping is a pure function both ways, so a process turns its own local paths back into
URIs (`to_uri`) and a URI handed to another node into that node's path (`local_path`)
without knowing anyone else's cache directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "ENV_NODE_CACHE",
    "is_remote",
    "local_path",
    "node_cache_dir",
    "to_uri",
]

ENV_NODE_CACHE = "TINYEXP_NODE_CACHE"
DEFAULT_NODE_CACHE = Path("~/.cache/tinyexp/storage")
# Two letters at least, so a Windows drive (`C://`) is never taken for a scheme.
_URI_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]+)://(?P<rest>.*)$")


def _split(uri: str) -> tuple[str, str] | None:
    match = _URI_RE.match(uri)
    if match is None:
        return None
    return match.group("scheme").lower(), match.group("rest")


def is_remote(root: str | os.PathLike[str]) -> bool:
    """Whether `root` is an object-store URI (`file://` and plain paths are local)."""
    parts = _split(os.fspath(root))
    return parts is not None and parts[0] != "file"


def node_cache_dir() -> Path:
    """This node's cache of remote objects: `$TINYEXP_NODE_CACHE`, else ~/.cache/tinyexp/storage.
    Every rank on a node shares it; nothing in it is the record (the bucket is)."""
    return Path(os.environ.get(ENV_NODE_CACHE) or DEFAULT_NODE_CACHE).expanduser().resolve()


def local_path(location: str | os.PathLike[str]) -> Path:
    """The local path of `location` on this node: a plain path as it is, `file://x` as `x`,
    a remote URI as its place in this node's mirror."""
    text = os.fspath(location)
    parts = _split(text)
    if parts is None:
        return Path(text)
    scheme, rest = parts
    if scheme == "file":
        return Path("/" + rest.lstrip("/"))
    rest = rest.strip("/")
    if not rest or any(p in ("..", ".") for p in rest.split("/")):
        from tinyexp_core.config.exceptions import ConfigValueError

        raise ConfigValueError("storage root", text, "scheme://bucket[/prefix] without . or ..")
    return node_cache_dir() / scheme / rest


def to_uri(path: str | os.PathLike[str]) -> str:
    """The URI of a path in this node's mirror; any other path (or a URI) as it is."""
    text = os.fspath(path)
    if _split(text) is not None:
        return text
    cache, path = node_cache_dir(), Path(text).absolute()
    if not path.is_relative_to(cache):
        path = path.resolve()  # a path through a symlink to the cache
        if not path.is_relative_to(cache):
            return text
    relative = path.relative_to(cache)
    scheme, *rest = relative.parts
    if not rest:
        return text
    return f"{scheme}://{'/'.join(rest)}"
