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

    `poll()` after each optimizer step. With several ranks it costs one all-reduce of two
    numbers every `check_every_n_steps` steps (the flags are only looked at then), so every
    rank stops, and checkpoints, at the same step. `every_n_steps` counts global steps;
    `every_s` is measured on each rank and the first rank whose interval is up decides.
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

    def poll(self, step: int) -> tuple[bool, bool]:
        """(stop, save) after global step `step`; a stop implies its own checkpoint."""
        save = self._every_n > 0 and step % self._every_n == 0
        # Whether to look at all depends on `step` only, never on a rank's clock: a rank
        # that skipped the all-reduce its peers entered would hang them.
        if step % self._check_every and not save:
            return False, False
        if self._every_s > 0 and self._clock() - self._last_save >= self._every_s:
            save = True
        stop = stop_requested()
        if getattr(self._acc, "world_size", 1) > 1:
            import torch

            flags = self._acc.reduce_sum(torch.tensor([float(stop), float(save)]))
            stop, save = bool(flags[0] > 0), bool(flags[1] > 0)
        if save or stop:
            self._last_save = self._clock()
        return stop, save and not stop
