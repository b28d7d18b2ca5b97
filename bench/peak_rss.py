"""Peak resident memory of a benchmark's processes, from Linux's /proc: a sampler thread.

Every `period_s` (0.2 s) the thread lists the processes a finder names (a listing of /proc;
the parent id and command line of a process seen for the first time, and again the
command line of a Ray worker until it takes its actor's title) and reads each one's `VmHWM`
(the kernel's own peak of its resident set) from /proc/<pid>/status, keeping the last
value seen per process: the peak is the kernel's, not a sample's, so a short spike between
two samples counts; only growth in a process's last ~0.2 s can be missed. A process that
lives across runs (a warm Ray rank) has its peak reset first (`reset_peak`: "5" written to
/proc/<pid>/clear_refs), so its value is this run's. Cost: a tick lists /proc and reads a
few small files, ~1-3 ms of one core every 0.2 s (under 2% of one core; reading every
process's command line each tick cost 40 ms on a loaded 2-core machine, hence the cache);
`Sampler.busy_s`, its total, is saved with each run.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

RANK_TITLE = "ray::_RankWorker"  # a Ray rank actor's process title (tinyexp_core.launchers.ray)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:  # gone, or not ours
        return ""


def peak_kib(pid: int) -> int | None:
    """The process's peak resident set (VmHWM) in KiB; None when it is gone."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current resident set; False when not possible."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _environ(pid: int) -> str:
    return _read(f"/proc/{pid}/environ")


def _unsettled(title: str) -> bool:
    """A Ray worker not yet titled as its actor (it starts as `default_worker.py`)."""
    return "default_worker" in title or title.startswith("ray::IDLE")


class ProcessTable:
    """Parent ids and command lines of the processes, cached: a tick lists /proc and reads
    only new processes and Ray workers still to become an actor."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[int, str]] = {}

    def scan(self) -> dict[int, tuple[int, str]]:
        """pid -> (parent pid, command line with spaces)."""
        out = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            known = self._known.get(pid)
            if known is None or _unsettled(known[1]):
                stat = _read(f"/proc/{pid}/stat")
                if not stat:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                known = (ppid, _read(f"/proc/{pid}/cmdline").replace("\0", " "))
            out[pid] = known
        self._known = out
        return out


def children(table: dict[int, tuple[int, str]], parent: int) -> set[int]:
    """The processes `parent` started (a torchrun agent's ranks)."""
    return {pid for pid, (ppid, _) in table.items() if ppid == parent}


def rank_pids(table: dict[int, tuple[int, str]]) -> set[int]:
    """Processes titled as a Ray rank actor (any Ray's: pick this run's by its marks)."""
    return {pid for pid, (_, title) in table.items() if title.startswith(RANK_TITLE)}


def reset_rank_peaks(marker: str) -> int:
    """Reset the peak of every Ray rank process whose environment holds `marker` (this
    benchmark's Ray: warm ranks that live across runs); returns how many were reset."""
    table = ProcessTable().scan()
    return sum(reset_peak(pid) for pid in rank_pids(table) if marker in _environ(pid))


class Sampler:
    """A thread keeping the last VmHWM seen of each process `find(table, root)` names."""

    def __init__(
        self, find: Callable[[dict[int, tuple[int, str]], int], set[int]], period_s: float = 0.2
    ) -> None:
        self._find, self._period = find, period_s
        self._table = ProcessTable()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.root = 0
        self.peaks: dict[int, int] = {}  # pid -> KiB
        self.busy_s, self.ticks = 0.0, 0

    def tick(self) -> None:
        started = time.perf_counter()
        for pid in {self.root, *self._find(self._table.scan(), self.root)}:
            kib = peak_kib(pid)
            if kib is not None:
                self.peaks[pid] = kib
        self.busy_s += time.perf_counter() - started
        self.ticks += 1

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            self.tick()

    def start(self, root: int) -> None:
        self.root = root
        self._thread = threading.Thread(target=self._loop, name="peak-rss", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def spawn_sampled(
    cmd: Sequence[str], sampler: Sampler, env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[float, float, str]:
    """`bench.common.spawn_timed` with `sampler` running on the process while it lives."""
    start = time.time()
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    sampler.start(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    finally:
        sampler.stop()
    end = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-2000:]}\n{err[-4000:]}")
    return start, end, out


def mib(kib: int | None) -> float:
    return float("nan") if kib is None else kib / 1024
