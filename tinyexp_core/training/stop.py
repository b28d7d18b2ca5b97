"""Checkpoint-then-stop: one stop request, whatever asked for it.

A `StopHandle` is one run's request. In a driver the run's own handle is passed to whoever
may stop it and to the launcher that acts on it (`signals_stop` turns the terminal's
SIGINT/SIGTERM into requests on it; a sweep's pruning asks it). In a rank, a SIGTERM/SIGINT
(inside `stop_on_signals`), the launcher's Ray actor method or a test hook calls
`request_stop(reason)`, which asks the process's own handle. Nothing is interrupted: the
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
    "StopHandle",
    "clear_stop",
    "process_handle",
    "request_stop",
    "signals_stop",
    "stop_on_signals",
    "stop_reason",
    "stop_requested",
]

# How long a launcher waits for its ranks to checkpoint and exit after a stop request
# before it kills them (the bound: gone within 15 s plus one step).
STOP_GRACE_S = 15.0


class StopHandle:
    """One run's stop request, passed explicitly to whoever may stop it and to the launcher
    that acts on it: a terminal signal in the driver (`signals_stop`), a sweep's pruning
    decision, an orchestrator hook. The first request's reason and signal stand; `force()`
    (a second Ctrl-C) asks to end the ranks at once, without waiting for a checkpoint."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._forced = threading.Event()
        self.reason = ""
        self.signum: int | None = None  # the signal that asked, None for any other stop
        self._reclaim: Any = None  # set inside `signals_stop`: puts its handlers back

    def request(self, reason: str = "stop requested", *, signum: int | None = None) -> None:
        """Ask the run to checkpoint and stop; safe from any thread and a signal handler."""
        if not self._requested.is_set():
            self.reason, self.signum = reason, signum
        self._requested.set()

    def force(self, reason: str) -> None:
        """Ask to end the ranks now (implies a request)."""
        self.request(reason)
        self._forced.set()

    @property
    def requested(self) -> bool:
        """Whether a stop was requested (and not cleared)."""
        return self._requested.is_set()

    @property
    def forced(self) -> bool:
        """Whether the ranks are to end at once."""
        return self._forced.is_set()

    def clear(self) -> None:
        """Forget the request (a new run with the same handle starts clean)."""
        self._requested.clear()
        self._forced.clear()
        self.reason, self.signum = "", None

    def reclaim_signals(self) -> None:
        """Inside `signals_stop`: install its handlers again. `ray.init` replaces the
        process's SIGTERM handler (Ray's exits the process, and its native failure handler
        prints a stack dump and aborts), so a launcher calls this once Ray is connected."""
        if self._reclaim is not None:
            self._reclaim()


_PROCESS = StopHandle()  # the process's own handle: `request_stop` and friends


def process_handle() -> StopHandle:
    """The handle `request_stop` sets: the one a rank's loop and a launcher given no
    handle of its own read."""
    return _PROCESS


def request_stop(reason: str = "stop requested") -> None:
    """Ask this process's training loop to checkpoint and stop; safe from any thread."""
    _PROCESS.request(reason)


def stop_requested() -> bool:
    """Whether `request_stop` was called since the last `clear_stop`."""
    return _PROCESS.requested


def stop_reason() -> str:
    """What asked for the stop ("" if nothing did)."""
    return _PROCESS.reason if _PROCESS.requested else ""


def clear_stop() -> None:
    """Forget a stop request (a new run in the same process starts clean)."""
    _PROCESS.clear()


@contextlib.contextmanager
def signals_stop(
    handle: StopHandle, say: Any = None, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
) -> Iterator[bool]:
    """Inside, in a driver's main thread: the first SIGINT/SIGTERM is `handle.request` (the
    ranks checkpoint and stop), the second `handle.force` plus a KeyboardInterrupt (the
    ranks end at once), later ones are ignored (cleanup runs undisturbed). `say(line)`
    tells the user. On exit the handlers found on entry come back. Yields whether the
    handlers were installed (not outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    tell = say or (lambda _line: None)

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if not handle.requested:
            handle.request(f"received {name}", signum=signum)
            tell(f"{name}: every rank checkpoints and stops; Ctrl-C again ends them at once")
        elif not handle.forced:
            handle.force(f"received {name} again")
            tell(f"{name} again: ending the ranks now")
            raise KeyboardInterrupt(f"{name} again")

    def install() -> None:
        for sig in signals:
            signal.signal(sig, on_signal)

    previous = {sig: signal.getsignal(sig) for sig in signals}
    install()
    handle._reclaim = install
    try:
        yield True
    finally:
        handle._reclaim = None
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[bool]:
    """Inside, SIGTERM/SIGINT become `request_stop`; yields whether handlers were installed.

    Signal handlers can only be set in the main thread; elsewhere (a Ray actor's method
    runs in a worker thread) this does nothing and the launcher calls `request_stop`.
    A Ray launcher in this process installs them again once `ray.init` replaced them
    (`StopHandle.reclaim_signals` on the process's handle).
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return

    def on_signal(signum: int, _frame: Any) -> None:
        _PROCESS.request(f"received {signal.Signals(signum).name}", signum=signum)

    def install() -> None:
        for sig in signals:
            signal.signal(sig, on_signal)

    previous = {sig: signal.getsignal(sig) for sig in signals}
    outer_reclaim = _PROCESS._reclaim
    install()
    _PROCESS._reclaim = install
    try:
        yield True
    finally:
        _PROCESS._reclaim = outer_reclaim
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# The most steps between two agreements, whatever the step time: a stop waits two of them.
MAX_AGREE_INTERVAL_STEPS = 64


class StopAgreement:
    """Per-step decision, identical on every rank: stop now? write a step checkpoint now?

    `poll()` after each optimizer step. `every_n_steps` counts global steps, so every rank
    knows by itself when that save is due. A stop request and `every_s` (measured on each
    rank's clock) are local, so the ranks agree on them: with several ranks each check
    starts a non-blocking all-reduce of the two flags and reads the one the previous check
    started, which has long finished by then. A training step never waits on it, and every
    rank reads the same agreed flags at the same step: a stop (or an `every_s` save) asked
    for at step k happens at the check after the next one, on every rank. With one rank
    the flags apply at once, after every step. `close()` waits for the all-reduce still in
    flight (call it on every rank before the process group goes away).

    How often the ranks check: about every `agree_every_s` seconds (0 = after every step).
    Each check also carries every rank's proposal for the next interval in steps (its
    own seconds per step since its last check, turned into the steps that take
    `agree_every_s`, 1 to MAX_AGREE_INTERVAL_STEPS); the ranks take the mean of the
    proposals, the same on all of them, so they check at the same steps. A check is a
    collective with its own thread work and round trip: after every step it cost 2% of the
    MNIST example's CPU step on 2 ranks (35 ms steps); steps of 0.2 s or more still check
    after every step. A stop then waits for at most two intervals, about 2 x
    `agree_every_s` plus two steps.
    """

    def __init__(
        self,
        accelerator: Any,
        *,
        every_n_steps: int = 0,
        every_s: float = 0.0,
        agree_every_s: float = 0.0,
        clock: Any = time.monotonic,
    ) -> None:
        self._acc = accelerator
        self._every_n = int(every_n_steps)
        self._every_s = float(every_s)
        self._agree_every_s = float(agree_every_s)
        if not 0 <= self._agree_every_s < float("inf"):  # NaN fails too
            raise ValueError(f"agree_every_s must be seconds >= 0, finite; got {agree_every_s!r}")
        self._clock = clock
        self._last_save = clock()
        self._next_check = 0  # global step of the next check: the same on every rank
        self._last_check: tuple[int, float] | None = None  # (step, this rank's clock)
        self._in_flight: tuple[Any, Any] | None = None  # (work, flags tensor)

    def poll(self, step: int) -> tuple[bool, bool]:
        """(stop, save) after global step `step`; a stop implies its own checkpoint."""
        save = self._every_n > 0 and step % self._every_n == 0
        # Whether to look at all depends on `step` and agreed values only, never on a
        # rank's clock: a rank that skipped the all-reduce its peers entered would hang them.
        if step < self._next_check and not save:
            return False, False
        several = getattr(self._acc, "world_size", 1) > 1
        if several:
            stop, timed, interval = self._agreed()
        else:
            (stop, timed), interval = self._local_flags(), 1
        self._next_check = step + interval
        save = save or timed
        if save or stop:
            self._last_save = self._clock()
        if several and not stop:  # a stopping run starts no collective it would leave behind
            # After the clock restart above: an interval that is up is not asked for twice.
            self._start_agreement(*self._local_flags(), self._propose(step))
        return stop, save and not stop

    def close(self) -> None:
        """Wait for the all-reduce in flight, if any (on every rank, or none)."""
        self._agreed()

    def _local_flags(self) -> tuple[bool, bool]:
        timed = self._every_s > 0 and self._clock() - self._last_save >= self._every_s
        return stop_requested(), timed

    def _propose(self, step: int) -> int:
        """Steps until the check after next, from this rank's time per step so far."""
        now, last = self._clock(), self._last_check
        self._last_check = (step, now)
        if self._agree_every_s <= 0 or last is None or step <= last[0]:
            return 1
        per_step = (now - last[1]) / (step - last[0])
        if per_step <= 0:  # a clock that did not move: no basis for a longer interval
            return 1
        return max(1, min(MAX_AGREE_INTERVAL_STEPS, int(self._agree_every_s / per_step)))

    def _agreed(self) -> tuple[bool, bool, int]:
        """The flags and the interval to the next check that the previous check's all-reduce
        agreed on ((False, False, 1) at first)."""
        if self._in_flight is None:
            return False, False, 1
        work, flags = self._in_flight
        self._in_flight = None
        work.wait()
        interval = max(1, int(flags[2]) // self._acc.world_size)  # the mean proposal
        return bool(flags[0] > 0), bool(flags[1] > 0), interval

    def _start_agreement(self, stop: bool, timed: bool, proposal: int) -> None:
        import torch
        import torch.distributed as dist

        device = getattr(self._acc, "device", "cpu")
        # float64 whatever the default dtype: the summed proposals stay exact integers.
        flags = torch.tensor(
            [float(stop), float(timed), float(proposal)], dtype=torch.float64, device=device
        )
        self._in_flight = (dist.all_reduce(flags, op=dist.ReduceOp.SUM, async_op=True), flags)
