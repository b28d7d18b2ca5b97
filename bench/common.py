"""Shared benchmark helpers: machine facts, processes, datasets, Redis, timing marks."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    """One line describing the machine and the versions that matter."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    versions = []
    for pkg in ("torch", "ray", "dagster", "redis"):
        try:
            versions.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            continue
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, " + ", ".join(
        versions
    )


def python() -> str:
    return sys.executable


def run(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def prepare_data(out_root: str | Path, source: str = "synthetic", num_samples: int = 0) -> str:
    """Prepare (idempotently) a dataset the way `prepared_dataset` does; returns its path."""
    from tinyexp_core.data import load_source, prepare_dataset

    raw = load_source(source, num_samples=num_samples)
    return prepare_dataset(raw, out_root).path


def spawn_timed(
    cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600
) -> tuple[float, float, str]:
    """Run a command; returns (wall-clock start, wall-clock end, stdout). The start is taken
    right before spawning: it is the "process start" of startup measurements."""
    start = time.time()
    out = run(cmd, env=env, timeout=timeout)
    return start, time.time(), out


def first_marks(path: str | Path) -> dict[str, float]:
    """The first time each timing mark was written (tinyexp_core.timing's file format)."""
    from tinyexp_core.timing import read_marks

    marks: dict[str, float] = {}
    if Path(path).exists():
        for name, stamp, _ in read_marks(str(path)):
            marks.setdefault(name, stamp)
    return marks


def _loop_s(n: int) -> float:
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += i
    return time.perf_counter() - start


def cpu_probe() -> float:
    """Peak CPU speed: seconds of a fixed pure-Python loop (10**6 additions, best of 5), so
    runs on different days or machines can be told apart."""
    return round(min(_loop_s(1_000_000) for _ in range(5)), 4)


def cpu_sustained() -> float:
    """Sustained CPU speed: seconds of one loop of 10**7 additions (~1 s). Far above 10x
    `cpu_probe()` means the CPU was throttled or shared over that second (a host that
    grants its virtual CPUs a fraction of each period runs short loops at full speed)."""
    return round(_loop_s(10_000_000), 3)


def load_average() -> str:
    """The 1/5/15-minute load averages, to judge how noisy the machine was."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def dagster_events(dagster_home: str | Path) -> dict[str, float]:
    """Timestamps of the latest run's events in a Dagster home, first of each kind:
    `RUN_START`, `STEP_START:<step>`, `STEP_SUCCESS:<step>`, ... (time.time() seconds)."""
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        (latest,) = instance.get_runs(limit=1)
        events: dict[str, float] = {}
        for entry in instance.all_logs(latest.run_id):
            if entry.dagster_event is None:
                continue
            kind = entry.dagster_event.event_type_value
            key = f"{kind}:{entry.step_key}" if entry.step_key else kind
            events.setdefault(key, entry.timestamp)
        return events
    finally:
        instance.dispose()


# glibc's malloc hands large blocks (a conv layer's activations: megabytes) back to the OS and
# faults them in again, step after step: 30k-190k page faults per epoch of the MNIST example,
# 10-25% of a CPU step, and how many depends on the process's heap history, so two processes
# running the same loop differ by that much. Both sides of a comparison get these settings
# (no faults after the first epoch), so that ratios measure the code, not the heap.
# The values `tinyexp_core.launchers.runtime.steady_malloc` sets in a rank, for every process.
STEADY_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "67108864",
}


@contextlib.contextmanager
def steady_malloc() -> Iterator[None]:
    """Set STEADY_MALLOC in this process's environment, for the processes it starts (Ray's
    workers included: a local Ray started here passes its environment on)."""
    saved = {key: os.environ.get(key) for key in STEADY_MALLOC}
    os.environ.update(STEADY_MALLOC)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------- Redis
def redis_client(url: str, **kwargs: object):
    """A client for `url` made the way the project makes them."""
    from tinyexp_core.services.redis_client import make_client

    return make_client(url, **kwargs)


def embedded_server(root: str | Path):
    """The project's embedded Redis of a storage root (not started)."""
    from tinyexp_core.services.embedded_redis import EmbeddedRedis

    return EmbeddedRedis(root)


@contextlib.contextmanager
def embedded_redis(root: str | Path) -> Iterator[str]:
    """Start the embedded Redis of `root`, yield its URL, stop it."""
    server = embedded_server(root)
    url = server.ensure()
    try:
        yield url
    finally:
        server.stop()


def free_port() -> int:
    """A TCP port free on loopback right now."""
    from tinyexp_core.services.lifecycle import free_port as _free_port

    return _free_port()


# Every timed job runs this many epochs after its last timed one, untimed: the jobs take
# turns, so without it the job holding the last turn runs its last timed epoch while the
# others tear down (item 2 once measured that epoch at ~62% speed in 16 of 16 runs).
TRAILING_EPOCHS = 1


def turn_order(sides: Sequence[str], rep: int) -> list[str]:
    """The order of `sides` in round `rep`: side `rep % n` first (each side goes first
    equally often), the others in an order that also changes from one cycle to the next."""
    import itertools

    n = len(sides)
    first = sides[rep % n]
    rest = list(itertools.permutations([s for s in sides if s != first]))
    return [first, *rest[(rep // n) % len(rest)]]


def timed_epochs(rates: Sequence[float], num_epochs: int) -> list[float]:
    """The steady-state epochs of a run of `num_epochs` timed epochs (+ the trailing ones):
    the first (warm-up) and the trailing (untimed) ones left out."""
    if len(rates) != num_epochs + TRAILING_EPOCHS:
        raise RuntimeError(f"{len(rates)} epochs, expected {num_epochs} + {TRAILING_EPOCHS}")
    return list(rates[1:num_epochs])


def local_ray(root: str | Path, *, warm: bool) -> None:
    """Before a timed run on storage root `root`: `warm`: its default local Ray running
    (started now if needed, untimed, as after a first run); else none (a cold start)."""
    from tinyexp_core.services.ray_head import start_head, stop_head

    if warm:
        start_head(root, idle_stop_after_s=3600.0)
    else:
        stop_head(root)


def stop_local_ray(root: str | Path) -> None:
    """After a benchmark: stop the default local Ray its runs left warm on `root`."""
    local_ray(root, warm=False)


def settle_local_ray(root: str | Path, timeout_s: float = 120.0) -> None:
    """Wait (untimed) until the warm local Ray of `root`, if one runs, has refilled its pool
    of warm ranks: a refill imports torch in new processes, which would otherwise land in
    the next timed run, whichever side it is."""
    from tinyexp_core.launchers.ray_session import ray_session
    from tinyexp_core.services import ray_pool
    from tinyexp_core.services.ray_head import live_head_address

    address, _ = live_head_address(root)
    if not address:
        return
    with ray_session(address):
        pool = ray_pool.find_pool()
        deadline = time.monotonic() + timeout_s
        while pool is not None and time.monotonic() < deadline:
            status = ray_pool.pool_status(pool)
            if status["ready"] >= status["size"]:
                break
            time.sleep(0.5)
