"""Check a storage root before anything starts: reachable, credentials accepted, bucket there,
writable. One short probe, so a bad endpoint, key or bucket fails in seconds with one line
naming the URI (never a key), before Ray or Redis is touched."""

from __future__ import annotations

import os
import uuid

from tinyexp_core.storage.errors import StorageUnreachableError
from tinyexp_core.storage.location import _split, is_remote

__all__ = ["check_storage"]

# Error codes an S3-compatible server sends for keys it does not accept.
_CREDENTIAL_CODES = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "ExpiredToken",
    "NoCredentials",
    "Unable to locate credentials",
)


def _classify(err: BaseException) -> tuple[str, str]:
    """(kind, reason) of a failed probe."""
    # The backend's own error (botocore's, with its code) is the cause of fsspec's OSError.
    chain = [e for e in (err, err.__cause__, err.__context__) if e is not None]
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    if any(code in text for code in _CREDENTIAL_CODES):
        return "credentials", "the access key or secret was refused"
    if "NoSuchBucket" in text:
        return "missing", "the bucket does not exist"
    if isinstance(err, FileNotFoundError):
        return "missing", "the bucket or prefix does not exist"
    if isinstance(err, PermissionError) or "AccessDenied" in text:
        return "denied", "access denied (check the key's permissions)"
    return "unreachable", f"endpoint unreachable ({type(err).__name__})"


def check_storage(root: str) -> None:
    """Raise StorageUnreachableError unless the remote root can be listed and written.
    A local root is left alone (it is created where it is used)."""
    if not is_remote(root):
        return
    from tinyexp_core.storage.store import open_store

    scheme, rest = _split(root)  # type: ignore[misc]
    bucket = rest.strip("/").split("/", 1)[0]
    probe = f"{root.rstrip('/')}/.tinyexp-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        store = open_store(root, probe=True)
        store.fs.ls(f"{scheme}://{bucket}")  # raises for a missing bucket (exists() would not)
        store.write_bytes(probe, b"tinyexp storage probe")
        store.remove(probe)
    except Exception as err:  # every backend has its own error classes: classified by text
        kind, reason = _classify(err)
        raise StorageUnreachableError(root, kind, reason) from None
