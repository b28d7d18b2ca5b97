"""What runs inside Ray for a DDP job: the rank actor (`_RankWorker`: its node, a free
rendezvous port, a stop request served beside `run`, the experiment itself) and the log
actor (`_LogSink`) that buffers rank 0's lines until the driver drains them."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from tinyexp_core.launchers.runtime import forward_stdout, set_log_forwarder, steady_malloc


class _LogSink:
    """A tiny actor buffering log lines from the ranks until the driver drains them."""

    def __init__(self, max_lines: int = 10_000) -> None:
        self._lines: list[str] = []
        self._max = max_lines
        self.dropped = 0

    def append(self, line: str) -> None:
        if len(self._lines) >= self._max:
            self.dropped += 1
            return
        self._lines.append(line)

    def drain(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines


class _RankWorker:
    """One DDP rank: sets the torch.distributed environment, then runs the experiment."""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def master_endpoint(self) -> tuple[str, int]:
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def pid(self) -> int:
        return os.getpid()

    def request_stop(self, reason: str = "stop requested by the Ray launcher") -> None:
        """Ask the training loop running in `run` to checkpoint and stop (returns at once)."""
        from tinyexp_core.training.stop import request_stop

        request_stop(reason)

    def warm_up(self, preimports: tuple[str, ...]) -> int:
        """A warm rank's start (`ray_pool`): malloc settings and imports ahead of its run."""
        from tinyexp_core.services.ray_pool import warm_up

        return warm_up(preimports)

    def code_fingerprint(self) -> str:
        """The tinyexp code this process runs, taken as it warmed up (`ray_pool.keep_current`)."""
        from tinyexp_core.services.code_fingerprint import code_fingerprint

        return code_fingerprint()

    def run(self, exp_blob: bytes, env: dict[str, str], log_sink: Any, num_threads: int) -> Any:
        """Run the pickled experiment as the rank `env` names. The environment (the job's
        variables, PYTHONPATH among them) is applied before the experiment is unpickled,
        so a rank started before its run (a warm one) imports the driver's modules too."""
        from ray import cloudpickle

        from tinyexp_core.services.ray_pool import apply_python_path

        os.environ.update(env)
        apply_python_path(env.get("PYTHONPATH", ""))
        exp = cloudpickle.loads(exp_blob)
        _announce(exp, int(env["RANK"]))
        steady_malloc()  # before the first tensor: see tinyexp_core.launchers.runtime
        import torch

        torch.set_num_threads(max(1, num_threads))
        forward = None if log_sink is None else (lambda line: log_sink.append.remote(line))
        set_log_forwarder(forward)
        try:
            with forward_stdout(forward):
                return exp.run()
        finally:
            set_log_forwarder(None)
            _release_announcement()


def _announce(exp: Any, rank: int) -> None:
    """Register the rank (host, pid) and its stack dump, for the stall sensor's diagnosis."""
    progress = getattr(exp, "progress_cfg", None)
    if progress is None or not hasattr(progress, "announce_rank"):
        return  # an experiment with its own progress config: nothing to register with
    with contextlib.suppress(Exception):  # diagnosis must never fail a run
        progress.announce_rank(exp.ensure_run_id(), rank=rank, run_dir=exp.get_run_dir())


def _release_announcement() -> None:
    from tinyexp_core.progress.stacks import release_dump_handler

    with contextlib.suppress(Exception):  # cleanup must never mask the run's outcome
        release_dump_handler()
