"""Background uploads: rank 0 hands a written checkpoint over and goes on training.

The uploads run in a process of their own (`upload_worker`, started at the first submit),
not in a thread of the training process: the object-store client (request signing,
aiohttp) is Python, and in a thread it would take the GIL from the training loop every
time a checkpoint goes out. The training process only queues (path, URI) pairs on a pipe.
The worker works through them in order; an upload that fails is retried with exponential
backoff (`base_delay_s`, doubling, `max_delay_s` at most) up to `attempts` times. One that
keeps failing is kept as an `UploadFailedError` naming the local file (which stays where it
was written: nothing saved is lost), and later files stay local too; `check()` (each new
submit) and `flush()` (the end of a run) raise it, which fails the step. A worker that dies
fails its pending uploads the same way. The store must be reachable from another process
(any object store is; an in-memory fsspec filesystem is not).
"""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loguru import logger

from tinyexp_core.redaction import redact_text
from tinyexp_core.storage.errors import UploadFailedError
from tinyexp_core.storage.store import ObjectStore, local_sidecar

__all__ = ["RetryPolicy", "Uploader", "publish_with_retries"]


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


def publish_with_retries(store: ObjectStore, item: _Item, policy: RetryPolicy) -> str | None:
    """Upload one item with its retries (the worker's loop body); None when it is up (or
    its file is gone: retention removed it, a newer file supersedes it), else the last
    failure's reason."""
    path, uri = item.staged, item.uri
    failures = 0
    while True:
        try:
            store.publish(path, uri, item.known)
            return None
        except FileNotFoundError as err:
            if not path.exists():
                logger.debug("upload of {} skipped: file gone ({})", path, err)
                return None
            reason = f"{type(err).__name__}: {err}"
        except Exception as err:  # any backend error: retried, then reported
            reason = f"{type(err).__name__}: {err}"
        failures += 1
        if failures >= policy.attempts:
            return reason
        delay = policy.delay(failures)
        logger.warning(
            "upload of {} failed ({}); retry {} of {} in {:.1f} s",
            item.source,
            redact_text(reason).splitlines()[0],
            failures,
            policy.attempts - 1,
            delay,
        )
        time.sleep(delay)


class Uploader:
    """Uploads (local file, URI) pairs in order, in a worker process, with retries."""

    def __init__(self, store: ObjectStore, policy: RetryPolicy | None = None) -> None:
        self.store = store
        self.policy = policy or RetryPolicy()
        self.uploaded: list[str] = []  # URIs done, in order (tests, the run record)
        self._pending: dict[int, _Item] = {}
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._failure: UploadFailedError | None = None
        self._worker: subprocess.Popen | None = None
        self._inbox: IO[bytes] | None = None

    def submit(self, path: str | Path, uri: str, *, snapshot: bool = False) -> None:
        """Queue `path` for `uri`; raises an earlier upload's failure first.

        `snapshot=True`: the bytes as they are now (a hard link beside the file, with the
        sha256 its sidecar records), for a file the next save replaces (last.pt) while it
        waits in the queue."""
        self.check()
        path = Path(path)
        item = _Item(path, uri, path, None)
        if snapshot:
            staged = path.with_name(f".upload-{os.getpid()}-{next(self._ids)}-{path.name}")
            known = local_sidecar(path)
            try:
                os.link(path, staged)  # same inode: a later os.replace of `path` leaves it
            except FileNotFoundError:  # removed already (retention): a newer file supersedes
                logger.debug("upload of {} skipped: file gone", path)
                return
            item = _Item(staged, uri, path, known)
        with self._lock:
            inbox = self._inbox or self._start()
            key = next(self._ids)
            self._pending[key] = item
            try:
                pickle.dump((key, item), inbox)
                inbox.flush()
            except OSError as err:  # the worker is gone: its reader reports the failure
                logger.debug("upload worker not reachable: {}", err)

    def check(self) -> None:
        """Raise the failure of an upload that ran out of retries, if any."""
        if self._failure is not None:
            raise self._failure

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything queued is uploaded (or failed for good), then `check()`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"uploads still pending after {timeout_s} s")
                self._lock.wait(0.5 if left is None else min(left, 0.5))
        self.check()

    def close(self) -> None:
        """Flush, then end the worker."""
        try:
            self.flush()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """End the worker once it has done its queue (no flush, nothing raised)."""
        with self._lock:
            inbox, self._inbox = self._inbox, None
        _end_worker(inbox, self._worker)

    # ------------------------------------------------------------ the worker process

    def _start(self) -> IO[bytes]:
        """Start the worker (under the lock), hand it the store and policy."""
        worker = subprocess.Popen(
            [sys.executable, "-m", "tinyexp_core.storage.upload_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Not in the terminal's process group: a Ctrl-C stops the training, whose last
            # checkpoint still goes out; the worker ends when its input closes.
            start_new_session=True,
        )
        assert worker.stdin is not None and worker.stdout is not None
        pickle.dump((self.store, self.policy), worker.stdin)
        self._worker, self._inbox = worker, worker.stdin
        # The reader holds the uploader weakly, so one dropped without close() (a test, a
        # process ending) is collected and the finalizer below ends its worker.
        reader = threading.Thread(
            target=_read_results,
            args=(weakref.ref(self), worker),
            name="tinyexp-upload-results",
            daemon=True,
        )
        reader.start()
        weakref.finalize(self, _end_worker, worker.stdin, worker)
        return worker.stdin

    def _answer(self, key: int, reason: str | None) -> None:
        """One answer of the worker: None uploaded, a reason failed for good, "" dropped
        after an earlier failure."""
        with self._lock:
            item = self._pending.pop(key, None)
            if item is not None and reason is None:
                self.uploaded.append(item.uri)
            elif item is not None and reason and self._failure is None:
                self._fail(item, policy_attempts=self.policy.attempts, reason=reason)
            self._lock.notify_all()

    def _worker_exited(self, code: int) -> None:
        """What is still pending fails (its files stay local)."""
        with self._lock:
            if self._pending and self._failure is None:
                first = next(iter(self._pending.values()))
                self._fail(first, policy_attempts=0, reason=f"upload process exited ({code})")
            for item in self._pending.values():
                if item.staged != item.source:
                    item.staged.unlink(missing_ok=True)
            self._pending.clear()
            self._lock.notify_all()

    def _fail(self, item: _Item, *, policy_attempts: int, reason: str) -> None:
        self._failure = UploadFailedError(str(item.source), item.uri, policy_attempts, reason)
        logger.error(str(self._failure))


def _read_results(owner: weakref.ref[Uploader], worker: subprocess.Popen) -> None:
    """The worker's answers, in order, to the uploader while it exists; then its exit."""
    assert worker.stdout is not None
    while True:
        try:
            key, reason = pickle.load(worker.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            break
        uploader = owner()
        if uploader is not None:
            uploader._answer(key, reason)
        del uploader  # not held while waiting for the next answer
    code = worker.wait()
    uploader = owner()
    if uploader is not None:
        uploader._worker_exited(code)


def _end_worker(inbox: IO[bytes] | None, worker: subprocess.Popen | None) -> None:
    """Close the worker's input (it finishes what it has, then exits) and reap it."""
    if inbox is not None:
        try:
            inbox.close()
        except OSError:
            pass
    if worker is not None:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def serve(inbox: IO[bytes], outbox: IO[bytes]) -> None:
    """The worker's loop: (store, policy), then (key, item) until end of input; answers
    (key, None | reason | "") in order (see Uploader._answer)."""
    store, policy = pickle.load(inbox)
    failed = False
    while True:
        try:
            key, item = pickle.load(inbox)
        except EOFError:
            return
        reason: Any = ""
        try:
            if not failed:  # after a failure, later files stay local too
                reason = publish_with_retries(store, item, policy)
                failed = reason is not None
        finally:
            if item.staged != item.source:
                item.staged.unlink(missing_ok=True)
        pickle.dump((key, reason), outbox)
        outbox.flush()
