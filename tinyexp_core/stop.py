"""Checkpoint-then-stop: one stop request, whatever asked for it.

A SIGTERM/SIGINT (inside `stop_on_signals`), a launcher, a Ray actor method or an
orchestrator's termination hook calls `request_stop(reason)`. Nothing is interrupted: the
training loop polls a `StopAgreement` after each optimizer step; the ranks all-reduce their
flags, so all of them see the stop at the same step, rank 0 writes a step-level checkpoint
and every rank raises `RunStoppedError`, which the progress reporter records as `cancelled`.

A signal handler here only sets a flag, so a signal that arrives during a checkpoint write
never interrupts it: the write finishes, then the loop stops at its next poll.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = [
    "STOP_GRACE_S",
    "StopAgreement",
    "clear_stop",
    "request_stop",
    "stop_on_signals",
    "stop_reason",
    "stop_requested",
]

# How long a launcher waits for its ranks to checkpoint and exit after a stop request
# before it kills them (the bound: gone within 15 s plus one step).
STOP_GRACE_S = 15.0

_requested = threading.Event()
_reason = ""


def request_stop(reason: str = "stop requested") -> None:
    """Ask this process's training loop to checkpoint and stop; safe from any thread."""
    global _reason
    if not _requested.is_set():
        _reason = reason
    _requested.set()


def stop_requested() -> bool:
    """Whether `request_stop` was called since the last `clear_stop`."""
    return _requested.is_set()


def stop_reason() -> str:
    """What asked for the stop ("" if nothing did)."""
    return _reason if _requested.is_set() else ""


def clear_stop() -> None:
    """Forget a stop request (a new run in the same process starts clean)."""
    global _reason
    _requested.clear()
    _reason = ""


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[bool]:
    """Inside, SIGTERM/SIGINT become `request_stop`; yields whether handlers were installed.

    Signal handlers can only be set in the main thread; elsewhere (a Ray actor's method
    runs in a worker thread) this does nothing and the launcher calls `request_stop`.
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return

    def on_signal(signum: int, _frame: Any) -> None:
        request_stop(f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopAgreement:
    """Per-step decision, identical on every rank: stop now? write a step checkpoint now?

    `poll()` after each optimizer step. `every_n_steps` counts global steps, so every rank
    knows by itself when that save is due. A stop request and `every_s` (measured on each
    rank's clock) are local, so the ranks agree on them: with several ranks each check
    (every `check_every_n_steps` steps) starts a non-blocking all-reduce of the two flags
    and reads the one the previous check started, which has long finished by then. A
    training step never waits on it, and every rank reads the same agreed flags at the same
    step: a stop (or an `every_s` save) asked for at step k happens at the next check, on
    every rank. With one rank the flags apply at once. `close()` waits for the all-reduce
    still in flight (call it on every rank before the process group goes away).
    """

    def __init__(
        self,
        accelerator: Any,
        *,
        every_n_steps: int = 0,
        every_s: float = 0.0,
        check_every_n_steps: int = 1,
        clock: Any = time.monotonic,
    ) -> None:
        self._acc = accelerator
        self._every_n = int(every_n_steps)
        self._every_s = float(every_s)
        self._check_every = max(1, int(check_every_n_steps))
        self._clock = clock
        self._last_save = clock()
        self._in_flight: tuple[Any, Any] | None = None  # (work, flags tensor)

    def poll(self, step: int) -> tuple[bool, bool]:
        """(stop, save) after global step `step`; a stop implies its own checkpoint."""
        save = self._every_n > 0 and step % self._every_n == 0
        # Whether to look at all depends on `step` only, never on a rank's clock: a rank
        # that skipped the all-reduce its peers entered would hang them.
        if step % self._check_every and not save:
            return False, False
        several = getattr(self._acc, "world_size", 1) > 1
        stop, timed = self._agreed() if several else self._local_flags()
        save = save or timed
        if save or stop:
            self._last_save = self._clock()
        if several and not stop:  # a stopping run starts no collective it would leave behind
            # After the clock restart above: an interval that is up is not asked for twice.
            self._start_agreement(*self._local_flags())
        return stop, save and not stop

    def close(self) -> None:
        """Wait for the all-reduce in flight, if any (on every rank, or none)."""
        self._agreed()

    def _local_flags(self) -> tuple[bool, bool]:
        timed = self._every_s > 0 and self._clock() - self._last_save >= self._every_s
        return stop_requested(), timed

    def _agreed(self) -> tuple[bool, bool]:
        """The flags the previous check's all-reduce agreed on ((False, False) at first)."""
        if self._in_flight is None:
            return False, False
        work, flags = self._in_flight
        self._in_flight = None
        work.wait()
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _start_agreement(self, stop: bool, timed: bool) -> None:
        import torch
        import torch.distributed as dist

        device = getattr(self._acc, "device", "cpu")
        flags = torch.tensor([float(stop), float(timed)], device=device)
        self._in_flight = (dist.all_reduce(flags, op=dist.ReduceOp.SUM, async_op=True), flags)
