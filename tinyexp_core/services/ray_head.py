"""A local Ray that outlives runs (`tinyexp-dagster ray up` / `ray down`): warm starts.

`start_head(root)` spawns a detached holder process (`python -m
tinyexp_core.services.ray_head --root ROOT`) that starts a local Ray on 127.0.0.1 with the
options a run's own local Ray gets (`ray_session`), records it in `<root>/ray/address`
(JSON: the GCS address and the holder's pid) and waits for SIGTERM or SIGINT; then it shuts
its Ray down and removes the file. A run on the same storage root finds the file
(`live_head_address`), connects to that Ray instead of starting one, and leaves it running.
A file whose holder is gone, or whose Ray does not answer, is stale: runs say so and start
their own Ray as before. `stop_head` ends the holder (and with it its Ray processes).

Warm by default: a run on the default local Ray (no address, no `$RAY_ADDRESS`) calls
`ensure_head`, which starts that holder when none runs, so the Ray and its warm ranks
outlive the run like the embedded Redis does. Such a head stops itself after
`TINYEXP_RAY_IDLE_STOP_S` seconds (default 600) without a run: a run is a connected driver
(a live job in Ray's job table) or a recent claim (`claim`, made by a run about to connect).
A head from `ray up` has no idle stop (nor has a running one that `ray up` found: it is
held, `<root>/ray/held`): it runs until `ray down`. `spawn_head` starts the
holder without waiting for it, so Ray's start-up overlaps other work (dataset preparation).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tinyexp_core.config.exceptions import RayConnectionError
from tinyexp_core.files import atomic_write
from tinyexp_core.services.lifecycle import file_lock
from tinyexp_core.services.lifecycle import idle_stop_s as parse_idle_stop_s

HEAD_DIR = "ray"  # under the storage root
ADDRESS_FILE = "address"
STARTING_FILE = "starting"  # pid of a holder spawned but not yet recorded
CLAIM_FILE = "claim"  # touched by a run about to connect: the head is not idle
HELD_FILE = "held"  # `ray up` holds the head: no idle stop until `ray down`
LOG_FILE = "head.log"
ENV_IDLE_STOP_S = "TINYEXP_RAY_IDLE_STOP_S"
_MODULE = "tinyexp_core.services.ray_head"
# Where this module lived before `services/`: a holder started by that version still counts.
_OLD_MODULE = "tinyexp_core.launchers.ray_head"
START_TIMEOUT_S = 120.0  # Ray's own start-up on a busy 2-core machine takes 10-30 s
STOP_TIMEOUT_S = 30.0
_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class RayHead:
    """A recorded head: its GCS address (`127.0.0.1:port`) and the holder's pid."""

    address: str
    pid: int


def head_dir(root: str | Path) -> Path:
    return Path(root) / HEAD_DIR


def address_file(root: str | Path) -> Path:
    """`<root>/ray/address`: where `ray up` records the head and runs look for it."""
    return head_dir(root) / ADDRESS_FILE


def read_head(root: str | Path) -> RayHead | None:
    """The head recorded under `root`, live or not; None when no file (or an unreadable one)."""
    try:
        data = json.loads(address_file(root).read_text())
        return RayHead(address=str(data["address"]), pid=int(data["pid"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def why_not_live(head: RayHead) -> str:
    """ "" when the holder runs and its Ray answers at the address, else what is wrong."""
    if not _is_holder(head.pid):
        return f"its holder process {head.pid} is gone"
    host, _, port = head.address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=_PROBE_TIMEOUT_S):
            return ""
    except (OSError, ValueError) as err:
        return f"nothing answers at {head.address} ({type(err).__name__}: {err})"


def live_head_address(root: str | Path) -> tuple[str, str]:
    """(address, "") of a live head under `root`; ("", why) for a stale file; ("", "")
    when there is none."""
    head = read_head(root)
    if head is None:
        if address_file(root).exists():
            return "", f"{address_file(root)} is unreadable: ignored"
        return "", ""
    why = why_not_live(head)
    if why:
        return "", f"the local Ray recorded in {address_file(root)} is stale: {why}"
    return head.address, ""


def _is_holder(pid: int) -> bool:
    """Whether `pid` is a running holder process (not a recycled pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return False
    ours = _MODULE.encode() in argv or _OLD_MODULE.encode() in argv
    return ours and state != "Z"


@contextlib.contextmanager
def _locked(root: str | Path) -> Iterator[None]:
    """One `up` or `down` at a time per storage root."""
    directory = head_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory / ".lock", mode="w"):
        yield


def idle_stop_s() -> float:
    """`TINYEXP_RAY_IDLE_STOP_S`: seconds a default local Ray that no run uses stays up (the
    same rule and default as the embedded Redis's)."""
    return parse_idle_stop_s(ENV_IDLE_STOP_S)


def start_head(
    root: str | Path,
    *,
    num_cpus: int | None = None,
    warm_ranks: int | None = None,
    idle_stop_after_s: float | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> tuple[RayHead, bool]:
    """Start the head of `root`, or reuse the live one; returns (head, started now).

    `warm_ranks`: rank processes kept started with torch imported for the runs to take
    (`ray_pool`); None: `ray_pool.default_size` of its CPUs, 0: none. `idle_stop_after_s`:
    the head stops itself after that long without a run; None: it runs until `stop_head`."""
    if idle_stop_after_s is None:  # `ray up`: also a head already running stops no more
        head_dir(root).mkdir(parents=True, exist_ok=True)
        (head_dir(root) / HELD_FILE).touch()
    head, pid, started = spawn_head(
        root, num_cpus=num_cpus, warm_ranks=warm_ranks, idle_stop_after_s=idle_stop_after_s
    )
    if head is not None:
        return head, False
    return wait_head(root, pid, timeout_s), started


def ensure_head(root: str | Path, *, timeout_s: float = START_TIMEOUT_S) -> tuple[RayHead, bool]:
    """The default local Ray of `root` for a run: the live head (one from `ray up`, or one
    a previous run left warm), else one started now that stops after `idle_stop_s()`
    without a run; claimed for the run (`claim`) either way. Returns (head, started now)."""
    idle = idle_stop_s()  # a bad value fails before anything starts
    head, started = start_head(root, idle_stop_after_s=idle, timeout_s=timeout_s)
    claim(root)
    return head, started


def claim(root: str | Path) -> None:
    """Tell the head of `root` that a run is about to connect (it is not idle then)."""
    path = head_dir(root) / CLAIM_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def spawn_head(
    root: str | Path,
    *,
    num_cpus: int | None = None,
    warm_ranks: int | None = None,
    idle_stop_after_s: float | None = None,
) -> tuple[RayHead | None, int, bool]:
    """Start the holder of `root` without waiting for its Ray: (the live head or None, the
    holder's pid, spawned now). A holder already starting is not started twice."""
    root = Path(root).resolve()
    with _locked(root):
        head = read_head(root)
        if head is not None and not why_not_live(head):
            return head, head.pid, False
        starting = _starting_pid(root)
        if starting and _is_holder(starting):
            return None, starting, False
        address_file(root).unlink(missing_ok=True)  # stale: replaced below
        cmd = [sys.executable, "-m", _MODULE, "--root", str(root)]
        if num_cpus is not None:
            cmd += ["--num-cpus", str(num_cpus)]
        if warm_ranks is not None:
            cmd += ["--warm-ranks", str(warm_ranks)]
        if idle_stop_after_s is not None:
            cmd += ["--idle-stop-s", str(idle_stop_after_s)]
        with open(head_dir(root) / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives this command and its terminal
            )
        (head_dir(root) / STARTING_FILE).write_text(str(proc.pid))
        return None, proc.pid, True


def wait_head(root: str | Path, pid: int, timeout_s: float = START_TIMEOUT_S) -> RayHead:
    """The head that holder `pid` records under `root`, once it does (bounded wait)."""
    root = Path(root).resolve()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        head = read_head(root)
        if head is not None and head.pid == pid:
            return head
        if _gone(pid):  # not `_is_holder`: a child just forked may not have exec'd yet
            raise RayConnectionError("local", f"the Ray head exited: {_log_tail(root)}")
        time.sleep(0.1)
    _end(pid, STOP_TIMEOUT_S)
    raise RayConnectionError("local", f"no Ray head within {timeout_s:g} s: {_log_tail(root)}")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _starting_pid(root: Path) -> int:
    try:
        return int((head_dir(root) / STARTING_FILE).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def stop_head(root: str | Path, *, timeout_s: float = STOP_TIMEOUT_S) -> RayHead | None:
    """Stop the head of `root` (its Ray with it) and remove its file; returns the head that
    was recorded (None when there was none). A stale file is removed."""
    with _locked(root):
        head = read_head(root)
        if head is not None and _is_holder(head.pid):
            _end(head.pid, timeout_s)
        starting = _starting_pid(root)
        if starting and _is_holder(starting):  # spawned, not yet recorded
            _end(starting, timeout_s)
        for name in (ADDRESS_FILE, STARTING_FILE, HELD_FILE):
            (head_dir(root) / name).unlink(missing_ok=True)
        return head


def _end(pid: int, timeout_s: float) -> None:
    """SIGTERM the holder (it shuts its Ray down), then SIGKILL its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _is_holder(pid):
        time.sleep(0.2)
    if _is_holder(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # the holder leads its own session


def _log_tail(root: Path, lines: int = 15) -> str:
    try:
        text = (head_dir(root) / LOG_FILE).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------- the holder process


def serve(
    root: Path, num_cpus: int | None, warm_ranks: int | None = None, idle_s: float | None = None
) -> int:
    """The holder: start Ray and its warm-rank pool, record it, wait for SIGTERM/SIGINT (or,
    with `idle_s`, that long without a run), shut Ray down."""
    import ray

    from tinyexp_core.launchers.ray_rank import _RankWorker
    from tinyexp_core.launchers.ray_session import ENV_RAY_ADDRESS, LOCAL_HOST, _loopback_only
    from tinyexp_core.services import ray_pool

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop(ENV_RAY_ADDRESS, None)
    with _loopback_only():
        # The same options as the local Ray a run starts (ray_session), so a warm and a
        # cold run get the same Ray.
        ray.init(
            address="local",
            _node_ip_address=LOCAL_HOST,
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
            object_store_memory=256 * 1024 * 1024,
        )
    stop: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.append("stopped by a signal"))
    me = os.getpid()
    if warm_ranks is None:
        warm_ranks = ray_pool.default_size(ray.cluster_resources().get("CPU", 0))
    # The pool lives while this process holds its handle.
    pool = ray_pool.start_pool(warm_ranks, _RankWorker) if warm_ranks > 0 else None
    try:
        address = ray.get_runtime_context().gcs_address
        record = {"address": address, "pid": me, "started": time.time(), "idle_stop_s": idle_s}
        atomic_write(address_file(root), lambda f: f.write(json.dumps(record).encode()))
        (head_dir(root) / STARTING_FILE).unlink(missing_ok=True)
        until = "until stopped" if idle_s is None else f"until idle for {idle_s:g} s"
        print(f"Ray head at {address} (pid {me}) for {root}, {warm_ranks} warm ranks, {until}",
              flush=True)  # fmt: skip
        _hold(root, idle_s, stop)
    finally:
        head = read_head(root)
        if head is not None and head.pid == me:
            address_file(root).unlink(missing_ok=True)
        del pool
        ray.shutdown()
        print(f"Ray head (pid {me}) stopped: {stop[0] if stop else 'exiting'}", flush=True)
    return 0


def _hold(root: Path, idle_s: float | None, stop: list[str]) -> None:
    """Return when `stop` gets a reason: a signal, or `idle_s` seconds without a run."""
    import ray

    own_job = ray.get_runtime_context().get_job_id()
    poll_s = 0.5 if idle_s is None else min(1.0, max(0.1, idle_s / 5))
    last_busy = time.monotonic()
    while not stop:
        time.sleep(poll_s)
        if idle_s is None:
            continue
        if _in_use(root, own_job, idle_s):
            last_busy = time.monotonic()
        elif time.monotonic() - last_busy >= idle_s:
            stop.append(f"idle for {idle_s:g} s ({ENV_IDLE_STOP_S})")


def _in_use(root: Path, own_job: str, idle_s: float) -> bool:
    """A run uses this Ray: a live driver other than the holder (Ray's job table; a driver
    killed hard counts until Ray marks its job dead), or a claim younger than `idle_s`."""
    from ray._private import state

    if (head_dir(root) / HELD_FILE).exists():
        return True
    try:
        claimed = time.time() - (head_dir(root) / CLAIM_FILE).stat().st_mtime < idle_s
    except OSError:
        claimed = False
    if claimed:
        return True
    try:
        jobs = state.jobs()
    except Exception:  # the GCS did not answer this time: not evidence of idleness
        return True
    return any(not job["IsDead"] and job["JobID"] != own_job for job in jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hold a local Ray head for a storage root")
    parser.add_argument("--root", required=True)
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--warm-ranks", type=int, default=None)
    parser.add_argument("--idle-stop-s", type=float, default=None)
    args = parser.parse_args(argv)
    return serve(Path(args.root), args.num_cpus, args.warm_ranks, args.idle_stop_s)


if __name__ == "__main__":
    sys.exit(main())
