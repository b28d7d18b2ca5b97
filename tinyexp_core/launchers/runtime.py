"""Process-local hooks a launcher installs for the experiment it runs."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterator

_log_forwarder: Callable[[str], None] | None = None


def set_log_forwarder(fn: Callable[[str], None] | None) -> None:
    """Rank-0 log lines also go to `fn` (the Ray launcher streams them to its caller)."""
    global _log_forwarder
    _log_forwarder = None if fn is None else _this_process_only(fn)


def _this_process_only(fn: Callable[[str], None]) -> Callable[[str], None]:
    """`fn`, silenced in forked children (data loader workers inherit sinks and stdout):
    `fn` may call Ray, which a forked child must not use."""
    owner = os.getpid()

    def forward(line: str) -> None:
        if os.getpid() == owner:
            fn(line)

    return forward


def get_log_forwarder() -> Callable[[str], None] | None:
    return _log_forwarder


class _LineTee(io.TextIOBase):
    """A text stream writing through to `stream` and handing each complete line to `fn`."""

    def __init__(self, stream: io.TextIOBase, fn: Callable[[str], None]) -> None:
        self._stream = stream
        self._fn = _this_process_only(fn)
        self._pending = ""

    def write(self, text: str) -> int:
        self._stream.write(text)
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._send(line)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def flush_pending(self) -> None:
        if self._pending:
            self._send(self._pending)
            self._pending = ""

    def _send(self, line: str) -> None:
        # Best effort: a lost terminal line must never fail the run that printed it.
        with contextlib.suppress(Exception):
            self._fn(line.rstrip("\r"))

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def forward_stdout(fn: Callable[[str], None] | None) -> Iterator[None]:
    """While open, lines printed to stdout also go to `fn` (no-op when `fn` is None).

    A Ray worker's stdout reaches only its log file; an experiment written for TinyExp
    0.0.1 reports with `print` (and `accelerator.print`), so rank 0 forwards those lines
    to the launcher's caller, as Ray's own log streaming did for 0.0.1.
    """
    if fn is None:
        yield
        return
    saved = sys.stdout
    tee = _LineTee(saved, fn)
    sys.stdout = tee
    try:
        yield
    finally:
        tee.flush_pending()
        sys.stdout = saved


# glibc's malloc hands large freed blocks (a conv layer's activations: megabytes) back to
# the OS and faults them in again on the next step; in a thread other than the main one (a
# Ray actor's method runs in one) it does so on every step, since a thread's heap is
# trimmed whenever its free top passes M_TRIM_THRESHOLD. Measured on the MNIST example:
# 30k-190k page faults per epoch, 10-25% of a CPU step. A rank sets three knobs once:
# blocks up to 32 MiB come from the heap (M_MMAP_THRESHOLD), freed memory stays in the
# process for the next step (M_TRIM_THRESHOLD), as PyTorch's own GPU caching allocator
# keeps it, and a thread's arena never unmaps a whole 64 MiB heap of it (M_TOP_PAD: glibc
# deletes an arena's emptied last heap whatever the trim threshold unless the heap before it
# lacks top_pad of room, so a step whose working set spills past one heap faulted the spill
# in again every step; a CI machine whose kernels allocate differently measured 4,900 faults
# per step tuned against 1,300 untuned). The pad costs address space (and commit charge
# where overcommit is off), not memory: pages are only used once touched.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
STEADY_MALLOC_MMAP_THRESHOLD = 32 * 1024 * 1024
STEADY_MALLOC_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: about 2 GiB
STEADY_MALLOC_TOP_PAD = 64 * 1024 * 1024  # glibc's HEAP_MAX_SIZE on 64-bit
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_steady_malloc = False


def steady_malloc() -> bool:
    """Set glibc malloc's mmap threshold, trim threshold and top pad for a training rank
    (see above); returns whether they are set. Leaves them alone where the environment
    already sets any (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
    `MALLOC_TOP_PAD_`: the user's choice) and off glibc."""
    global _steady_malloc
    if _steady_malloc:
        return True
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _MALLOC_ENV):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _steady_malloc = (
        mallopt(_M_MMAP_THRESHOLD, STEADY_MALLOC_MMAP_THRESHOLD) == 1
        and mallopt(_M_TRIM_THRESHOLD, STEADY_MALLOC_TRIM_THRESHOLD) == 1
        and mallopt(_M_TOP_PAD, STEADY_MALLOC_TOP_PAD) == 1
    )
    return _steady_malloc


# What torchrun (its elastic agent) puts in every rank's environment beyond the rendezvous
# variables, so code written for torchrun finds it under our launchers too.
_TORCHRUN_THREAD_VARS = ("OMP_NUM_THREADS",)


def torchrun_env_defaults(
    *, num_threads: int, group_rank: int, num_groups: int, rank: int, world_size: int
) -> dict[str, str]:
    """torchrun's defaults for one rank: `OMP_NUM_THREADS` (torchrun: 1 with several ranks
    per node; here the rank's CPUs, the threads torch is told to use), the group (node) and
    role ranks and sizes, and `TORCH_NCCL_ASYNC_ERROR_HANDLING=1`. A variable the user set in
    the launching process's environment keeps the user's value."""
    defaults = {
        "OMP_NUM_THREADS": str(max(1, num_threads)),
        "GROUP_RANK": str(group_rank),
        "GROUP_WORLD_SIZE": str(num_groups),
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(world_size),
        "ROLE_NAME": "default",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    }
    return {name: os.environ.get(name, value) for name, value in defaults.items()}


def thread_env_defaults(num_threads: int) -> dict[str, str]:
    """The thread variables of `torchrun_env_defaults`, for a process's start (OpenMP reads
    them when torch is imported); the user's own values win."""
    return {name: os.environ.get(name, str(max(1, num_threads))) for name in _TORCHRUN_THREAD_VARS}
