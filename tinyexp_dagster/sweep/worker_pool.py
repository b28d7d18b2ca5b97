"""The sweep command's side of its trial workers (`worker`): start them, hand each idle one
a trial, read the results, replace one that died, stop them all.

A worker is a process in its own session (the terminal's Ctrl-C reaches the command only,
which then sends each busy worker exactly one SIGINT: a second would end its ranks without
a checkpoint). Two pipes per worker: trials go down one as JSON lines, results come back on
the other; the worker's output between trials goes to `<log_dir>/worker-<n>.log`, each
trial's to the trial's own log.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinyexp_dagster.cli_location import CodeLocation

_STOP_WAIT_S = 60.0  # a stopped trial's ranks checkpoint first (as for `dagster job execute`)
_CLOSE_WAIT_S = 30.0  # an idle worker told to end: it leaves Ray and exits


@dataclass
class Trial:
    """One trial handed to a worker: its partition key, tags, log, and when it was handed
    over (`time.time()`, and monotonic for durations)."""

    key: str
    tags: dict[str, str]
    log: Path
    handed: float = 0.0
    handed_monotonic: float = 0.0


@dataclass
class TrialWorker:
    """One worker process: its pipes, its own log, the trial it runs (None: idle)."""

    number: int
    process: subprocess.Popen
    requests: IO[str]
    results: IO[str]
    log: Path
    trial: Trial | None = None
    interrupted: bool = field(default=False)

    def give(self, trial: Trial) -> None:
        """Hand this idle worker a trial."""
        trial.handed, trial.handed_monotonic = time.time(), time.monotonic()
        request = {"key": trial.key, "tags": trial.tags, "log": str(trial.log)}
        self.trial = trial
        # A worker that died since its last trial: its results pipe ends, and the pool
        # reports this trial as failed with it (`WorkerPool.finished`).
        with contextlib.suppress(OSError):
            self.requests.write(json.dumps(request) + "\n")
            self.requests.flush()

    def interrupt(self) -> None:
        """One SIGINT to a busy worker (its trial's ranks checkpoint and stop), never two."""
        if self.trial is None or self.interrupted:
            return
        self.interrupted = True
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)

    def close(self) -> None:
        """No more trials: the worker ends after the one it runs."""
        with contextlib.suppress(OSError):  # a dead worker's pipe
            self.requests.close()


def location_json(location: CodeLocation) -> str:
    """The code location as the worker's `--location` (its fields, not its loaded cache)."""
    values = {f.name: getattr(location, f.name) for f in fields(location)}
    return json.dumps({k: v for k, v in values.items() if not k.startswith("_")})


class WorkerPool:
    """At most `size` workers of one training job; started as trials need them."""

    def __init__(
        self,
        location: CodeLocation,
        job: str,
        log_dir: Path,
        size: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.location, self.job, self.log_dir, self.size = location, job, log_dir, size
        self.env = dict(os.environ if env is None else env)
        self.workers: list[TrialWorker] = []
        self._started = 0
        self._selector = selectors.DefaultSelector()

    def busy(self) -> list[TrialWorker]:
        return [w for w in self.workers if w.trial is not None]

    def idle(self, wanted: int) -> Iterator[TrialWorker]:
        """Up to `wanted` idle workers, starting new ones while there are fewer than `size`."""
        for worker in [w for w in self.workers if w.trial is None][:wanted]:
            wanted -= 1
            yield worker
        while wanted > 0 and len(self.workers) < self.size:
            wanted -= 1
            yield self._start()

    def _start(self) -> TrialWorker:
        self._started += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"worker-{self._started}.log"
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        command = [sys.executable, "-m", "tinyexp_dagster.sweep.worker"]
        command += ["--location", location_json(self.location), "--job", self.job]
        command += ["--requests-fd", str(down_r), "--results-fd", str(up_w)]
        try:
            with log.open("wb") as out:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    pass_fds=(down_r, up_w),
                    start_new_session=True,
                )
        finally:
            os.close(down_r)
            os.close(up_w)
        requests = os.fdopen(down_w, "w", encoding="utf-8")
        results = os.fdopen(up_r, "r", encoding="utf-8")
        worker = TrialWorker(self._started, process, requests, results, log)
        self._selector.register(results, selectors.EVENT_READ, worker)
        self.workers.append(worker)
        return worker

    def finished(self, timeout_s: float) -> list[tuple[TrialWorker, Trial, dict[str, Any] | None]]:
        """The trials that ended within `timeout_s`: (worker, trial, its result), the result
        None when the worker died during it (that worker is gone from the pool)."""
        done = []
        for key, _ in self._selector.select(timeout_s):
            worker: TrialWorker = key.data
            line = worker.results.readline()
            trial = worker.trial
            if line:
                worker.trial = None
                if trial is not None:
                    done.append((worker, trial, json.loads(line)))
                continue
            self._drop(worker)  # the results pipe ended: the worker exited
            if trial is not None:
                done.append((worker, trial, None))
        return done

    def _drop(self, worker: TrialWorker) -> None:
        self._selector.unregister(worker.results)
        worker.results.close()
        worker.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=_CLOSE_WAIT_S)
        self.workers.remove(worker)

    def stop(self) -> None:
        """Every busy worker gets one SIGINT (its trial stops as a Ctrl-C on its own
        `dagster job execute` would stop it); then all are told to end, and waited for: a
        busy one while its ranks checkpoint, an idle one (it leaves Ray) killed if it hangs."""
        busy = self.busy()
        for worker in busy:
            worker.interrupt()
        for worker in self.workers:
            worker.close()
        for worker in self.workers:
            wait = _STOP_WAIT_S if worker in busy else _CLOSE_WAIT_S
            try:
                worker.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                if worker not in busy:
                    worker.process.kill()
                    worker.process.wait()
            with contextlib.suppress(OSError):
                worker.results.close()
        self._selector.close()
        self.workers.clear()
