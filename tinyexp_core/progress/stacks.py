"""Every rank's Python stack, for diagnosing a hung run.

Rank side (`announce_rank`, called by the launcher in each rank process): the rank writes
who it is to the progress store, `tinyexp:run:<run_id>:ranks` (hash: rank -> JSON with
host, pid, process start time, attempt, dump file), and installs a `faulthandler` dump of
all its threads on SIGUSR2 into `<run_dir>/stacks/rank<k>-pid<pid>.txt`.

Observer side (`collect_stacks`, called by the stall sensor): for each registered rank of
the latest attempt, `py-spy dump --pid` (the primary path: it reads the process from
outside, so it also works on a rank that is stuck in C code or stopped with SIGSTOP, where
it needs `--nonblocking`); where py-spy cannot attach, the faulthandler signal (which a
stopped process cannot serve). A rank on another host, or one that could not be dumped,
is listed with the reason: the record never has a silent gap. Every step is bounded in time.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tinyexp_core.progress import ranks_key

DUMP_SIGNAL = signal.SIGUSR2  # faulthandler's fallback dump (Ray and torch leave it alone)
PY_SPY_TIMEOUT_S = 8.0  # per py-spy call (a dump takes well under a second)
FAULTHANDLER_WAIT_S = 3.0  # how long a signalled rank has to write its dump
COLLECT_BUDGET_S = 25.0  # the whole collection, all ranks in parallel
_STACK_MAX_CHARS = 20_000  # per rank, in the record (the newest frames are at the top)


@dataclass(frozen=True)
class RankProcess:
    """Where one rank runs: what an observer needs to dump its stack."""

    rank: int
    host: str
    pid: int
    start_ticks: int | None = None  # /proc/<pid>/stat start time: tells a reused pid apart
    attempt: int = 1
    dump_file: str = ""  # faulthandler's file ("" = no handler installed)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RankProcess:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the name may hold spaces and parens
    return int(fields[19]) if len(fields) > 19 else None


def _process_state(pid: int) -> str:
    """`/proc/<pid>/status` State line, e.g. `T (stopped)`; "" when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


_dump_file_handle: Any = None  # kept open: faulthandler writes to its file descriptor


def install_dump_handler(path: str | os.PathLike[str]) -> str:
    """Dump every thread's stack to `path` (appended) on SIGUSR2; returns the path."""
    global _dump_file_handle
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a")  # noqa: SIM115 - must stay open for the handler
    faulthandler.register(DUMP_SIGNAL, file=handle, all_threads=True, chain=False)
    if _dump_file_handle is not None:
        with contextlib.suppress(Exception):
            _dump_file_handle.close()
    _dump_file_handle = handle
    return str(path)


def release_dump_handler() -> None:
    """Unregister the dump handler; its file goes when nothing was dumped into it (and
    its `stacks/` folder when empty), so a finished run directory keeps only real dumps."""
    global _dump_file_handle
    handle, _dump_file_handle = _dump_file_handle, None
    if handle is None:
        return
    with contextlib.suppress(Exception):
        faulthandler.unregister(DUMP_SIGNAL)
    with contextlib.suppress(Exception):
        handle.close()
        path = Path(handle.name)
        if path.stat().st_size == 0:
            path.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only if empty


def announce_rank(
    url: str, run_id: str, rank: int, *, run_dir: str, attempt: int = 1, ttl_s: int
) -> RankProcess:
    """Install the dump handler and register this process as `rank` of `run_id`. Best
    effort: a failure is logged, never raised (diagnosis must not fail training)."""
    from loguru import logger

    from tinyexp_core.services.redis_client import make_client

    pid = os.getpid()
    dump_file = ""
    try:
        dump_file = install_dump_handler(Path(run_dir) / "stacks" / f"rank{rank}-pid{pid}.txt")
    except Exception as err:  # best effort: a read-only run dir still trains
        logger.warning(f"rank {rank}: no faulthandler stack dump ({type(err).__name__}: {err})")
    me = RankProcess(rank, socket.gethostname(), pid, _start_ticks(pid), attempt, dump_file)
    if not url:
        return me
    try:
        client = make_client(url, socket_timeout_s=0.5, connect_timeout_s=0.5)
        try:
            pipe = client.pipeline(transaction=True)
            pipe.hset(ranks_key(run_id), str(rank), me.to_json())
            pipe.expire(ranks_key(run_id), ttl_s)
            pipe.execute()
        finally:
            client.close()
    except Exception as err:  # best effort, like every progress write
        logger.warning(f"rank {rank}: not registered in the progress store ({err})")
    return me


def read_ranks(client: Any, run_id: str) -> list[RankProcess]:
    """The run's registered ranks of its latest attempt, by rank (a retry re-registers)."""
    found = []
    for text in client.hgetall(ranks_key(run_id)).values():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            found.append(RankProcess.from_json(text))
    latest = max((r.attempt for r in found), default=0)
    return sorted((r for r in found if r.attempt == latest), key=lambda r: r.rank)


# ---------------------------------------------------------------- collection


@dataclass
class RankStack:
    """One rank's stack, or why there is none (`error`)."""

    rank: int
    host: str = ""
    pid: int | None = None
    method: str = ""  # "py-spy", "py-spy --nonblocking", "faulthandler"; "" = not collected
    stack: str = ""
    error: str = ""
    state: str = ""  # the process state when dumped, e.g. "T (stopped)"

    @property
    def collected(self) -> bool:
        return bool(self.stack)

    def header(self) -> str:
        where = f"host {self.host or '?'}, pid {self.pid if self.pid is not None else '?'}"
        state = f", state {self.state}" if self.state else ""
        how = f"via {self.method}" if self.collected else f"NOT COLLECTED: {self.error}"
        return f"rank {self.rank} ({where}{state}): {how}"


@dataclass
class StackReport:
    """Every rank's stack (or the reason it is missing), as attached to a stalled run."""

    ranks: list[RankStack] = field(default_factory=list)
    collected_at: float = 0.0  # unix time
    elapsed_s: float = 0.0
    host: str = ""  # where the collector ran

    @property
    def unreachable(self) -> list[RankStack]:
        return [r for r in self.ranks if not r.collected]

    def summary(self) -> str:
        got = len(self.ranks) - len(self.unreachable)
        text = f"stacks of {got}/{len(self.ranks)} rank(s) in {self.elapsed_s:.2f} s"
        if self.unreachable:
            missing = "; ".join(f"rank {r.rank}: {r.error}" for r in self.unreachable)
            text += f"; not collected: {missing}"
        return text

    def text(self) -> str:
        """All ranks, one block each: a header line, then the stack as the tool printed it."""
        return "\n\n".join(f"{r.header()}\n{r.stack}".rstrip() for r in self.ranks)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> StackReport:
        data = json.loads(text)
        data["ranks"] = [RankStack(**r) for r in data.get("ranks", [])]
        return cls(**data)


def find_py_spy() -> str | None:
    """py-spy beside this interpreter (the venv's, installed with `ray[default]`), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def collect_stacks(
    ranks: Sequence[RankProcess],
    *,
    world_size: int | None = None,
    py_spy: str | None = "auto",
    budget_s: float = COLLECT_BUDGET_S,
) -> StackReport:
    """Dump every rank in `ranks` (in parallel, bounded by `budget_s`); ranks below
    `world_size` that never registered are listed as missing. `py_spy`: its path, "auto"
    to look for it, None to use only the faulthandler fallback."""
    started, host = time.monotonic(), socket.gethostname()
    tool = find_py_spy() if py_spy == "auto" else py_spy
    deadline = started + budget_s
    by_rank = {r.rank: r for r in ranks}
    expected = range(max([world_size or 0, *(r + 1 for r in by_rank)]))
    results: dict[int, RankStack] = {}
    for rank in expected:
        if rank not in by_rank:
            why = "never registered in the progress store (not started, or its write failed)"
            results[rank] = RankStack(rank, error=why)
    local = [r for r in by_rank.values() if r.host == host]
    for proc in by_rank.values():
        if proc.host != host:
            results[proc.rank] = RankStack(
                proc.rank,
                proc.host,
                proc.pid,
                error=f"runs on host {proc.host}, the collector on {host}: py-spy needs the "
                f"process on this machine (run `py-spy dump --pid {proc.pid}` there)",
            )
    if local:
        with ThreadPoolExecutor(max_workers=min(8, len(local))) as pool:
            futures = {p.rank: pool.submit(_dump_one, p, tool, deadline) for p in local}
            for rank, future in futures.items():
                try:
                    results[rank] = future.result(timeout=max(0.0, deadline - time.monotonic()) + 1)
                except Exception as err:  # a dump that outlived the budget, or a bug
                    proc = by_rank[rank]
                    why = f"collection did not finish within {budget_s:g} s ({type(err).__name__})"
                    results[rank] = RankStack(rank, proc.host, proc.pid, error=why)
    return StackReport(
        ranks=[results[r] for r in sorted(results)],
        collected_at=time.time(),
        elapsed_s=time.monotonic() - started,
        host=host,
    )


def _dump_one(proc: RankProcess, py_spy: str | None, deadline: float) -> RankStack:
    """py-spy (blocking, then --nonblocking for a process it cannot pause), then the
    faulthandler signal; the errors of every path tried when all fail."""
    out = RankStack(proc.rank, proc.host, proc.pid, state=_process_state(proc.pid))
    if not _pid_exists(proc.pid):
        out.error = f"process {proc.pid} is gone"
        return out
    if proc.start_ticks is not None and _start_ticks(proc.pid) not in (None, proc.start_ticks):
        out.error = f"pid {proc.pid} now belongs to another process (the rank is gone)"
        return out
    errors = []
    if py_spy is None:
        errors.append("py-spy: not installed (pip install py-spy; ray[default] ships it)")
    else:
        for extra in ([], ["--nonblocking"]):
            timeout = min(PY_SPY_TIMEOUT_S, deadline - time.monotonic())
            if timeout <= 0:
                errors.append("py-spy: collection time budget spent")
                break
            stack, error = _py_spy(py_spy, proc.pid, extra, timeout)
            if stack:
                out.method, out.stack = " ".join(["py-spy", *extra]), stack
                return out
            errors.append(f"py-spy{' --nonblocking' if extra else ''}: {error}")
    stack, error = _faulthandler(proc, deadline)
    if stack:
        out.method, out.stack = "faulthandler", stack
        return out
    errors.append(f"faulthandler: {error}")
    out.error = "; ".join(errors)
    return out


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _py_spy(tool: str, pid: int, extra: list[str], timeout_s: float) -> tuple[str, str]:
    """(stack, "") or ("", why)."""
    try:
        done = subprocess.run(
            [tool, "dump", "--pid", str(pid), *extra],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "RUST_BACKTRACE": "0"},
        )
    except subprocess.TimeoutExpired:
        return "", f"no answer within {timeout_s:.1f} s"
    except OSError as err:
        return "", f"{type(err).__name__}: {err}"
    if done.returncode == 0 and "Thread " in done.stdout:
        return done.stdout.strip()[-_STACK_MAX_CHARS:], ""
    lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
    detail = " ".join(ln for ln in lines if not ln[:1].isdigit())[:300] or "no stack printed"
    return "", f"exit {done.returncode}: {detail}"


def _faulthandler(proc: RankProcess, deadline: float) -> tuple[str, str]:
    """Signal the rank's faulthandler and read what it appended to its dump file."""
    if not proc.dump_file:
        return "", "no dump handler registered by the rank"
    path = Path(proc.dump_file)
    try:
        before = path.stat().st_size
    except OSError as err:
        return "", f"dump file unreadable ({err})"
    try:
        os.kill(proc.pid, DUMP_SIGNAL)
    except OSError as err:
        return "", f"cannot signal pid {proc.pid} ({err})"
    wait_until = min(deadline, time.monotonic() + FAULTHANDLER_WAIT_S)
    size = before
    while time.monotonic() < wait_until:
        time.sleep(0.1)
        new = path.stat().st_size
        if new > before and new == size:  # grew, then stopped growing: the dump is complete
            with open(path, errors="replace") as f:
                f.seek(before)
                return f.read().strip()[-_STACK_MAX_CHARS:], ""
        size = new
    state = _process_state(proc.pid)
    stopped = " (a stopped process cannot run a signal handler)" if state.startswith("T") else ""
    return "", f"no dump within {FAULTHANDLER_WAIT_S:g} s, process state {state or '?'}{stopped}"
