"""Background uploads: rank 0 hands a written checkpoint over and goes on training.

One daemon thread per process works through a queue; an upload that fails is retried with
exponential backoff (`base_delay_s`, doubling, `max_delay_s` at most) up to `attempts`
times. One that keeps failing is kept as an `UploadFailedError` naming the local file
(which stays where it was written: nothing saved is lost); `check()` (each new submit) and
`flush()` (the end of a run) raise it, which fails the step.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from tinyexp_core.redaction import redact_text
from tinyexp_core.storage.errors import UploadFailedError
from tinyexp_core.storage.store import ObjectStore, local_sidecar

__all__ = ["RetryPolicy", "Uploader"]


@dataclass(frozen=True)
class _Item:
    staged: Path  # what is read: the file, or a hard link to it taken at submit
    uri: str
    source: Path  # the file as the run names it (what an error names)
    known: tuple[str, int] | None  # (sha256, size) recorded when it was written


@dataclass(frozen=True)
class RetryPolicy:
    """How an upload is retried."""

    attempts: int = 5  # tries in all, the first included
    base_delay_s: float = 0.5  # wait before the second try; doubles after each failure
    max_delay_s: float = 8.0  # the longest wait between two tries

    def delay(self, failures: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2 ** (failures - 1))


class Uploader:
    """Uploads (local file, URI) pairs in order, in a daemon thread, with retries."""

    def __init__(self, store: ObjectStore, policy: RetryPolicy | None = None) -> None:
        self.store = store
        self.policy = policy or RetryPolicy()
        self.uploaded: list[str] = []  # URIs done, in order (tests, the run record)
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._counter, self._counter_lock = 0, threading.Lock()
        self._failure: UploadFailedError | None = None
        self._thread = threading.Thread(target=self._work, name="tinyexp-upload", daemon=True)
        self._thread.start()

    def submit(self, path: str | Path, uri: str, *, snapshot: bool = False) -> None:
        """Queue `path` for `uri`; raises an earlier upload's failure first.

        `snapshot=True`: the bytes as they are now (a hard link beside the file, with the
        sha256 its sidecar records), for a file the next save replaces (last.pt) while it
        waits in the queue."""
        self.check()
        path = Path(path)
        if not snapshot:
            self._queue.put(_Item(path, uri, path, None))
            return
        known = local_sidecar(path)
        with self._counter_lock:
            self._counter += 1
            staged = path.with_name(f".upload-{os.getpid()}-{self._counter}-{path.name}")
        try:
            os.link(path, staged)  # same inode: a later os.replace of `path` leaves it alone
        except FileNotFoundError:  # removed already (retention): a newer file supersedes it
            logger.debug("upload of {} skipped: file gone", path)
            return
        self._queue.put(_Item(staged, uri, path, known))

    def check(self) -> None:
        """Raise the failure of an upload that ran out of retries, if any."""
        if self._failure is not None:
            raise self._failure

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything queued is uploaded (or failed for good), then `check()`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"uploads still pending after {timeout_s} s")
            time.sleep(0.02)
        self.check()

    def close(self) -> None:
        """Flush, then stop the thread."""
        try:
            self.flush()
        finally:
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._failure is None:  # after a failure, later files stay local too
                    self._upload(item)
                elif item.staged != item.source:
                    item.staged.unlink(missing_ok=True)
            finally:
                self._queue.task_done()

    def _upload(self, item: _Item) -> None:
        try:
            self._retry(item)
        finally:
            if item.staged != item.source:
                item.staged.unlink(missing_ok=True)

    def _retry(self, item: _Item) -> None:
        path, uri = item.staged, item.uri
        failures = 0
        while True:
            try:
                self.store.publish(path, uri, item.known)
                self.uploaded.append(uri)
                return
            except FileNotFoundError as err:
                # Retention removed the file before its turn (a newer one supersedes it).
                if not path.exists():
                    logger.debug("upload of {} skipped: file gone ({})", path, err)
                    return
                reason = f"{type(err).__name__}: {err}"
            except Exception as err:  # any backend error: retried, then reported
                reason = f"{type(err).__name__}: {err}"
            failures += 1
            if failures >= self.policy.attempts:
                self._failure = UploadFailedError(str(item.source), uri, failures, reason)
                logger.error(str(self._failure))
                return
            delay = self.policy.delay(failures)
            logger.warning(
                "upload of {} failed ({}); retry {} of {} in {:.1f} s",
                item.source,
                redact_text(reason).splitlines()[0],
                failures,
                self.policy.attempts - 1,
                delay,
            )
            time.sleep(delay)
