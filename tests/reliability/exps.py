"""Test-only experiments with fault injection, importable by Ray workers by module name.

`ReliabilityExp` is the MNIST example plus:

- a trace: rank 0 appends one JSON line per trained epoch to `<run_dir>/trace.jsonl`
  (epoch, attempt, pid, rendezvous port), so a test can tell which epochs ran in which
  attempt and that no completed epoch was trained twice;
- injected faults, armed by a marker file that holds how many more attempts should fail
  (each fault decrements it, so a retry or re-execution then succeeds):
  `fault=raise` raises after saving epoch >= `fault_epoch`; `fault=reject` raises a
  non-retryable error there instead (the step fails once, as for a deterministic fault);
  `fault=crash_mid_write` and
  `fault=crash_after_replace` SIGKILL rank 0 while it writes `last.pt` of `fault_epoch`
  (half the bytes written, or the data renamed into place but no sidecar yet);
  `fault=truncate_last` truncates `last.pt` on disk after saving and then raises;
  `fault=raise_at_step` raises on rank 0 after global step `fault_step` (mid-epoch: the
  retry resumes from the last step checkpoint of `checkpoint_cfg.every_n_steps`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tests.hooks import wrapped
from tinyexp_core.accelerators import AcceleratorCfg
from tinyexp_core.config.exceptions import TinyExpError
from tinyexp_core.config.experiment import TinyExp
from tinyexp_core.examples.mnist_exp import Exp as MnistExp
from tinyexp_core.training import TrainingSession
from tinyexp_core.training.recipe import StepCheckpoints

TRACE_FILE = "trace.jsonl"


class InjectedFailure(RuntimeError):
    """The failure a test asked for."""


class InjectedRejection(TinyExpError):
    """A failure a test asked for that another attempt would meet again (not retried)."""

    retryable = False


def take_fault(marker: str) -> bool:
    """True (and one fewer left) if the marker file still asks for a failure."""
    path = Path(marker)
    try:
        left = int(path.read_text().strip() or "0")
    except (OSError, ValueError):
        return False
    if left <= 0:
        return False
    path.write_text(str(left - 1))
    return True


def read_trace(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / TRACE_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # SIGKILL is delivered at once; never returns


@dataclass(repr=False)
class ReliabilityExp(MnistExp):
    """The MNIST example with an epoch trace and injectable faults (see the module doc)."""

    exp_name: str = "reliability"
    fault: Literal[
        "",
        "raise",
        "reject",
        "crash_mid_write",
        "crash_after_replace",
        "truncate_last",
        "raise_at_step",
    ] = ""
    fault_epoch: int = 0
    fault_step: int = 0  # fault=raise_at_step: the global step after which rank 0 raises
    fault_marker: str = ""  # file holding how many more attempts fail
    eval_delay_s: float = 0.0  # seconds evaluate() waits first (a test terminates it there)
    # the split that waits (empty: every split); rank 0's scores of val and test after
    # training (training/after.py) need not wait for a test that stops a step's scoring
    eval_delay_split: str = ""

    def train(self) -> Any:
        with contextlib.ExitStack() as hooks:
            hooks.enter_context(wrapped(TrainingSession, "batches", before=self._epoch_started))
            hooks.enter_context(
                wrapped(TrainingSession, "end_epoch", before=self._arm, after=self._epoch_ended)
            )
            if self.fault == "raise_at_step":
                hooks.enter_context(wrapped(StepCheckpoints, "__call__", after=self._fail_at))
            return super().train()

    def evaluate(self, checkpoint_path: str, split: str = "test") -> Any:
        if self.eval_delay_split in ("", split):
            time.sleep(self.eval_delay_s)
        return super().evaluate(checkpoint_path, split)

    def _epoch_started(self, session: TrainingSession, *_: Any) -> None:
        self._started = time.time()

    def _fail_at(self, checkpoints: Any, _result: Any, step: int, _position: Any) -> None:
        main = int(os.environ.get("RANK", "0")) == 0
        if main and step == self.fault_step and take_fault(self.fault_marker):
            raise InjectedFailure(f"injected failure after step {step}")

    def _arm(self, session: TrainingSession, **_: Any) -> None:
        """Before the epoch's checkpoint: decide whether this epoch fails, and how."""
        self._armed = (
            session.is_main_process
            and self.fault not in ("", "raise_at_step")
            and session.epoch >= self.fault_epoch
            and take_fault(self.fault_marker)
        )
        if self._armed and self.fault.startswith("crash"):
            self._crash_while_saving(session.last_checkpoint_path)

    def _epoch_ended(self, session: TrainingSession, *_: Any, **__: Any) -> None:
        epoch = session.epoch
        if session.is_main_process:
            record = {
                "epoch": epoch,
                "attempt": int(os.environ.get("TINYEXP_ATTEMPT", "1")),
                "progress_run_id": os.environ.get("TINYEXP_PROGRESS_RUN_ID", ""),
                "pid": os.getpid(),
                "started": self._started,
                "ended": time.time(),
                "world_size": session.world_size,
                "master_addr": os.environ.get("MASTER_ADDR", ""),
                "master_port": os.environ.get("MASTER_PORT", ""),
            }
            with open(Path(self.get_run_dir()) / TRACE_FILE, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        if not self._armed:
            return
        session.flush_checkpoints()  # the epoch's files are written in the background
        last_path = session.last_checkpoint_path
        if self.fault == "truncate_last":
            with open(last_path, "r+b") as fh:
                fh.truncate(os.path.getsize(last_path) // 2)
        if self.fault == "reject":
            raise InjectedRejection(f"injected non-retryable failure after epoch {epoch}")
        raise InjectedFailure(f"injected failure after epoch {epoch}")

    def _crash_while_saving(self, last_path: str) -> None:
        """SIGKILL this rank at the chosen point of the next write of last.pt."""
        import torch

        from tinyexp_core.checkpoint import format as ckpt  # where the files are written

        if self.fault == "crash_mid_write":
            real_save = torch.save

            def half_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
                import io

                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                _kill_self()

            ckpt.torch.save = half_save  # type: ignore[attr-defined]
            return
        real_replace = os.replace

        def replace_then_die(src: Any, dst: Any) -> None:
            real_replace(src, dst)
            if os.fspath(dst) == last_path:
                _kill_self()

        os.replace = replace_then_die  # what atomic writes rename with (tinyexp_core.files)


@dataclass(repr=False)
class HungRankExp(TinyExp):
    """Rank 1 never reaches the all_reduce; rank 0 must fail through the collective timeout."""

    exp_name: str = "hung_rank"
    hang_s: float = 600.0
    accelerator_cfg: AcceleratorCfg = field(default_factory=lambda: AcceleratorCfg("cpu"))

    def train(self) -> dict[str, Any]:
        import torch

        acc = self.accelerator_cfg.build_accelerator()  # timeout: collective_timeout_s
        try:
            if acc.rank == 1:
                time.sleep(self.hang_s)
            started = time.perf_counter()
            try:
                acc.reduce_sum(torch.ones(1))
            except Exception as err:
                waited = time.perf_counter() - started
                raise RuntimeError(
                    f"all_reduce gave up after {waited:.1f} s (timeout {acc.timeout_s:g} s): "
                    f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                ) from err
            return {"rank": acc.rank}
        finally:
            acc.destroy()


@dataclass(repr=False)
class PeerDiesExp(TinyExp):
    """Rank 0 fails first with a peer-closed error; rank 1's process dies a moment later,
    as when a SIGKILLed rank's peer notices the closed connection before Ray does."""

    exp_name: str = "peer_dies"
    rank0_fails_after_s: float = 0.2
    rank1_dies_after_s: float = 1.0

    def train(self) -> dict[str, Any]:
        if int(os.environ.get("RANK", "0")) == 0:
            time.sleep(self.rank0_fails_after_s)
            raise RuntimeError("Connection closed by peer (gloo)")
        time.sleep(self.rank1_dies_after_s)
        _kill_self()
        return {}
