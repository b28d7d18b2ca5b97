"""The driver's watch over a Ray DDP job's running ranks: their results in rank order, the
first failure named with its rank and cause (a dead peer before the collectives it broke),
stop requests passed to the ranks with a grace period, and interrupts that Ray's C code
wrapped in a SystemError unwrapped."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from tinyexp_core.config.exceptions import RunStoppedError, WorkerFailedError
from tinyexp_core.training.stop import STOP_GRACE_S, StopHandle

_PEER_DEATH_GRACE_S = 3.0  # after a rank fails, how long to look for a peer that died


def wait_for_ranks(
    refs: list[Any],
    sink: Any,
    *,
    actors: list[Any],
    stop: StopHandle,
    forward: Callable[[list[str]], None],
) -> list[Any]:
    """Poll the ranks; the first failure ends the job and names the rank and cause."""
    import ray

    rank_of = {ref: rank for rank, ref in enumerate(refs)}
    results: dict[int, Any] = {}
    stopped: list[RunStoppedError] = []
    stop_deadline: float | None = None
    pending = list(refs)
    while pending:
        if stop.requested and stop_deadline is None:
            stop_deadline = time.monotonic() + STOP_GRACE_S
            ask_to_stop(actors, [], wait_s=0, reason=stop.reason)
        if stop.forced:
            raise RunStoppedError("", -1, f"{stop.reason}: ranks ended at once")
        if stop_deadline is not None and time.monotonic() > stop_deadline:
            raise RunStoppedError("", -1, f"ranks did not stop within {STOP_GRACE_S:g} s")
        done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        forward(ray.get(sink.drain.remote()))
        for ref in done:
            rank = rank_of[ref]
            try:
                results[rank] = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                raise WorkerFailedError(rank, f"worker process died ({_first_line(err)})") from err
            except ray.exceptions.RayTaskError as err:
                if isinstance(err.cause, RunStoppedError):
                    stopped.append(err.cause)  # a clean stop, not a failure
                    continue
                died = _dead_peer(pending, rank_of)
                if died is not None:
                    raise died from err
                cause = err.cause if err.cause is not None else err
                raise WorkerFailedError(rank, f"{type(cause).__name__}: {cause}") from cause
            except ray.exceptions.RayError as err:
                # e.g. an error the driver cannot unpickle; its text still ends with it.
                raise WorkerFailedError(rank, _last_line(err)) from err
    if stopped:
        raise min(stopped, key=lambda e: not e.checkpoint)  # rank 0's names the file
    return [results[r] for r in range(len(refs))]


def ask_to_stop(actors: list[Any], refs: list[Any], *, wait_s: float, reason: str = "") -> None:
    """Send every rank a stop request; wait up to `wait_s` for their runs to end."""
    import ray

    for actor in actors:
        with contextlib.suppress(Exception):
            actor.request_stop.remote(reason or "stop requested by the Ray launcher")
    if refs and wait_s > 0:
        with contextlib.suppress(BaseException):
            ray.wait(refs, num_returns=len(refs), timeout=wait_s)


def _dead_peer(pending: list[Any], rank_of: dict[Any, int]) -> Any:
    """A rank that died, if one did, as the error to report instead of its peer's.

    When a rank's process dies, its peers' collectives fail at once ("connection
    closed by peer") and may reach the driver before Ray reports the death; the dead
    rank is the cause worth naming, so give Ray a moment to report it.
    """
    import ray

    deadline = time.monotonic() + _PEER_DEATH_GRACE_S
    while pending and time.monotonic() < deadline:
        done, pending = ray.wait(
            pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic())
        )
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as err:
                return WorkerFailedError(rank_of[ref], f"worker process died ({_first_line(err)})")
            except Exception:  # another rank failing the same way: keep looking
                continue
    return None


def is_interrupt(err: BaseException) -> bool:
    """KeyboardInterrupt, Dagster's termination and the like, also when Ray wrapped them."""
    if not isinstance(err, Exception):
        return True
    return isinstance(err, SystemError) and interrupt_inside(err) is not None


def interrupt_inside(err: SystemError) -> BaseException | None:
    """The interrupt a signal handler raised while Ray's C code was waiting, if any.

    A handler that raises inside a C call (Ray's wait/get poll for signals) surfaces as
    SystemError("... returned a result with an exception set") caused by the original
    exception. KeyboardInterrupt and Dagster's termination are BaseExceptions and must
    reach the caller as themselves, or they pass for ordinary, retryable errors.
    """
    cause = err.__cause__
    if cause is not None and not isinstance(cause, Exception):
        return cause
    return None


def _last_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1].strip() if text else type(err).__name__


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
