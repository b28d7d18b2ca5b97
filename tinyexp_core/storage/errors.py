"""Typed errors of the storage root: each names the URI (credentials hidden), never a key."""

from __future__ import annotations

from tinyexp_core.config.exceptions import TinyExpError
from tinyexp_core.redaction import redact_text


class StorageError(TinyExpError):
    """Base class of storage errors."""


class StorageUnreachableError(StorageError):
    """The storage root cannot be used: endpoint down, credentials refused, bucket missing.

    Raised by `check_storage` before any compute starts; one line naming the URI and the
    reason (`kind`: `unreachable`, `credentials`, `missing`, `denied`)."""

    retryable = False  # every attempt meets the same endpoint, keys and bucket

    def __init__(self, uri: str, kind: str, reason: str) -> None:
        self.uri = redact_text(uri)
        self.kind = kind
        self.reason = redact_text(reason).splitlines()[0] if reason.strip() else kind
        super().__init__(f"storage root {self.uri} is not usable ({kind}): {self.reason}")


class ObjectIncompleteError(StorageError, FileNotFoundError):
    """An object without its sha256 sidecar, or whose bytes do not match it: a half-done
    upload, never taken for a checkpoint or a dataset file."""

    retryable = False

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = redact_text(uri)
        self.reason = reason
        super().__init__(f"object {self.uri} is incomplete or corrupt: {reason}")


class UploadFailedError(StorageError):
    """An upload kept failing after its retries. The file stays on this node's disk at
    `local_path`, so nothing saved is lost: copy it by hand, or resume on this node."""

    retryable = False

    def __init__(self, local_path: str, uri: str, attempts: int, reason: str) -> None:
        self.local_path = local_path
        self.uri = redact_text(uri)
        self.attempts = attempts
        self.reason = redact_text(reason).splitlines()[0] if reason.strip() else "?"
        super().__init__(
            f"upload of {local_path} to {self.uri} failed {attempts} times ({self.reason}); "
            f"the file is kept on this node's local disk at {local_path}"
        )
