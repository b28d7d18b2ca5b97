"""`launcher=mp`: N local processes as one DDP job, or the world torchrun already started.

With `num_workers=1` the experiment runs in this process. With `num_workers=N` this
launcher spawns N processes on this host, each with the torch.distributed environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1, a free MASTER_PORT); the
accelerator builds the process group from it (gloo on CPU, nccl on GPU). Every rank's
result comes back, rank 0 first; the first failure ends the job and names the rank and
its cause. On every exit path (success, a failure, KeyboardInterrupt) the children are
terminated, then killed, in `finally`. A stop request in this process (`tinyexp_core.training.stop`,
e.g. a SIGTERM to the CLI) is passed on to the ranks as SIGTERM: they agree on a step,
checkpoint and exit with RunStoppedError, which is raised here; ranks still running
`STOP_GRACE_S` later are killed.

Under torchrun (or `accelerate launch`) WORLD_SIZE and RANK are already set: the process
joins that world instead of spawning, and `num_workers` must equal WORLD_SIZE.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import socket
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any

from tinyexp_core.config.exceptions import (
    ConfigValueError,
    InsufficientResourcesError,
    RunStoppedError,
    WorkerFailedError,
)
from tinyexp_core.launchers.runtime import steady_malloc
from tinyexp_core.training.stop import STOP_GRACE_S, stop_requested

LOCAL_HOST = "127.0.0.1"
_PEER_DEATH_GRACE_S = 3.0  # after a rank fails, how long to look for a peer that died
_TERMINATE_WAIT_S = 5.0  # how long a terminated rank may take to exit before it is killed


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a world started for us (torchrun, accelerate)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launch_local(exp: Any) -> list[Any]:
    """Run `exp` as `exp.num_workers` local ranks; returns their results, rank 0 first.

    Under torchrun this process is one rank: its own result is the only one returned.
    """
    if launched_by_torchrun():
        world_size = int(os.environ["WORLD_SIZE"])
        if exp.num_workers != world_size:
            raise ConfigValueError(
                "num_workers",
                exp.num_workers,
                f"{world_size}, the WORLD_SIZE of the torchrun world this process joined",
            )
        return [exp.run()]
    if exp.num_workers == 1:
        return [exp.run()]
    _check_gpus(exp)
    exp.ensure_run_id()  # one run id (and run dir) for every rank
    return _LocalWorld(exp).run()


def _check_gpus(exp: Any) -> None:
    """GPUs for N local ranks must exist on this host; checked before any process starts.

    nccl cannot run two ranks on one device, so an accelerator that picks DDP on CUDA
    (`auto`, `ddp`) needs a GPU per rank when CUDA is present.
    """
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    need = exp.num_workers * exp.num_gpus_per_worker
    if need > have:
        raise InsufficientResourcesError(
            "GPU",
            need,
            have,
            f"{exp.num_workers} local processes x {exp.num_gpus_per_worker:g}",
            where="this host",
        )
    accelerator = getattr(getattr(exp, "accelerator_cfg", None), "accelerator", None)
    if have and accelerator in ("auto", "ddp") and exp.num_workers > have:
        raise InsufficientResourcesError(
            "GPU",
            exp.num_workers,
            have,
            f"accelerator_cfg.accelerator={accelerator} runs nccl with one GPU per local "
            "rank; accelerator_cfg.accelerator=cpu trains on the CPU",
            where="this host",
        )


def free_port(host: str = LOCAL_HOST) -> int:
    """A TCP port free on `host` now (the rendezvous binds it a moment later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _rank_main(exp: Any, env: dict[str, str], num_threads: int, conn: Connection) -> None:
    """Body of one spawned rank: the rank environment, then `exp.run()`; the outcome goes
    back through `conn` as ("ok", result) or ("error", exception or None, traceback text)."""
    os.environ.update(env)
    steady_malloc()  # before the first tensor: see tinyexp_core.launchers.runtime
    import torch

    torch.set_num_threads(max(1, num_threads))
    try:
        outcome: tuple = ("ok", exp.run())
    except BaseException as err:
        outcome = ("error", err, traceback.format_exc())
    try:
        try:
            conn.send(outcome)
        except Exception:  # a value that does not pickle: its text still says what it was
            conn.send(("error", None, traceback.format_exc()))
    finally:
        conn.close()
    if outcome[0] == "error" and not isinstance(outcome[1], Exception):
        raise outcome[1]  # KeyboardInterrupt, SystemExit: end this process as asked


class _LocalWorld:
    """The N processes of one local DDP job and their lifecycle."""

    def __init__(self, exp: Any) -> None:
        self.exp = exp
        self.size = int(exp.num_workers)
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self.stop_deadline: float | None = None  # set once a stop was passed to the ranks

    def run(self) -> list[Any]:
        ctx = mp.get_context("spawn")  # fork would copy torch's threads and CUDA state
        port = free_port()
        threads = max(1, int(self.exp.num_cpus_per_worker))
        try:
            for rank in range(self.size):
                receiver, sender = ctx.Pipe(duplex=False)
                env = {
                    "RANK": str(rank),
                    "WORLD_SIZE": str(self.size),
                    "LOCAL_RANK": str(rank),
                    "LOCAL_WORLD_SIZE": str(self.size),
                    "MASTER_ADDR": LOCAL_HOST,
                    "MASTER_PORT": str(port),
                }
                if "GLOO_SOCKET_IFNAME" not in os.environ:
                    env["GLOO_SOCKET_IFNAME"] = "lo"  # every rank is on this host
                proc = ctx.Process(
                    target=_rank_main,
                    args=(self.exp, env, threads, sender),
                    name=f"tinyexp-rank{rank}",
                )
                proc.start()
                sender.close()  # the child holds the only write end: EOF means it exited
                self.procs.append(proc)
                self.conns.append(receiver)
            return self._wait()
        finally:
            self._stop_all()

    def _wait(self) -> list[Any]:
        """Collect every rank's outcome; the first failure ends the job, naming the rank."""
        results: dict[int, Any] = {}
        pending = dict(enumerate(self.conns))
        while pending:
            self._pass_on_stop()
            ready = wait(list(pending.values()), timeout=0.2)
            for conn in ready:
                rank = self.conns.index(conn)
                del pending[rank]
                outcome = self._receive(rank, conn)
                if isinstance(outcome, WorkerFailedError):
                    raise self._dead_peer(pending) or outcome
                results[rank] = outcome
        # Rank order, not arrival order: rank 0's names the checkpoint it wrote.
        stopped = [results[r] for r in sorted(results) if isinstance(results[r], RunStoppedError)]
        if stopped:
            raise stopped[0]
        return [results[r] for r in range(self.size)]

    def _pass_on_stop(self) -> None:
        """Forward a stop request to the ranks once; kill them when the grace time is up."""
        if not stop_requested():
            return
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + STOP_GRACE_S
            for proc in self.procs:
                if proc.is_alive():
                    with contextlib.suppress(Exception):
                        os.kill(proc.pid, signal.SIGTERM)
        elif time.monotonic() > self.stop_deadline:
            for proc in self.procs:
                with contextlib.suppress(Exception):
                    proc.kill()
            raise RunStoppedError("", -1, f"ranks did not stop within {STOP_GRACE_S:g} s")

    def _receive(self, rank: int, conn: Connection) -> Any:
        """A rank's result, or the WorkerFailedError that describes how it ended."""
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return self._death(rank)
        if message[0] == "ok":
            return message[1]
        _, err, text = message
        if isinstance(err, RunStoppedError):
            return err  # a clean checkpoint-then-stop, not a failure
        if err is None:
            last = text.strip().splitlines()[-1] if text.strip() else "unknown error"
            return WorkerFailedError(rank, last)
        failure = WorkerFailedError(rank, f"{type(err).__name__}: {err}")
        failure.__cause__ = err
        return failure

    def _death(self, rank: int) -> WorkerFailedError:
        """The error of a rank whose process ended without a word (killed, crashed)."""
        proc = self.procs[rank]
        proc.join(timeout=_TERMINATE_WAIT_S)
        code = proc.exitcode
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                return WorkerFailedError(
                    rank, f"worker process died (killed by {signal.Signals(-code).name})"
                )
        return WorkerFailedError(rank, f"worker process died (exit code {code})")

    def _dead_peer(self, pending: dict[int, Connection]) -> WorkerFailedError | None:
        """A rank that died, if one did, to report instead of the peer it took down.

        When a rank's process dies, its peers' collectives fail at once ("connection closed
        by peer"), possibly before the death is seen here; the dead rank is the cause.
        """
        deadline = time.monotonic() + _PEER_DEATH_GRACE_S
        while pending and time.monotonic() < deadline:
            for conn in wait(list(pending.values()), timeout=deadline - time.monotonic()):
                rank = self.conns.index(conn)
                del pending[rank]
                try:
                    conn.recv()
                except (EOFError, OSError):
                    return self._death(rank)
        return None

    def _stop_all(self) -> None:
        """Terminate every rank still running, kill the ones that ignore it, reap all."""
        for proc in self.procs:
            if proc.is_alive():
                with contextlib.suppress(Exception):
                    proc.terminate()
        deadline = time.monotonic() + _TERMINATE_WAIT_S
        for proc in self.procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                with contextlib.suppress(Exception):
                    proc.kill()
                proc.join(timeout=_TERMINATE_WAIT_S)
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.close()
