"""Experiments for the benchmarks; Ray workers import them by module name (`bench.ddp_exp`).

- `BareLoopExp` (`bench.ddp_scaling`): a tiny TinyExp whose `train()` is the bare loop on the
  experiment's accelerator; launched by `RayLauncher`, it runs exactly the loop torchrun
  runs from `bench/bare_loop.py`: only the launcher and the process-group setup differ.
- `TurnTakingMnistExp` (`bench.training_overhead`): the MNIST example, taking epoch turns
  with bare loops running at the same time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tinyexp_core.accelerators import AcceleratorCfg
from tinyexp_core.config.experiment import TinyExp
from tinyexp_core.examples.mnist_exp import Exp as MnistExp


@dataclass(repr=False)
class BareLoopExp(TinyExp):
    """The bare loop of `bench.bare_loop` as an experiment; returns per-epoch samples/s."""

    exp_name: str = "bare_loop"
    prepared_path: str = ""  # a prepared dataset directory (its train split is used)
    num_epochs: int = 3
    batch_size: int = 32  # per rank
    turn_file: str = ""  # non-empty: take epoch turns with other jobs (bench.bare_loop.Turns)
    turn_me: str = "ray"  # this job's name in the turn file
    turn_next: str = "torchrun"  # the job whose turn follows this one's
    accelerator_cfg: AcceleratorCfg = field(default_factory=AcceleratorCfg)

    def train(self) -> list[float]:
        from bench.bare_loop import build_model, load_train, train_epochs
        from tinyexp_core.timing import mark

        acc = self.accelerator_cfg.build_accelerator()
        mark(f"process_group_ready_rank{acc.rank}")
        try:
            x, y = load_train(self.prepared_path)
            model, optimizer = build_model(x.shape[1])
            model = acc.prepare_model(model)
            return train_epochs(
                model,
                optimizer,
                x,
                y,
                batch_size=self.batch_size,
                num_epochs=self.num_epochs,
                rank=acc.rank,
                world_size=acc.world_size,
                turns=self._turns(),
            )
        finally:
            acc.destroy()

    def _turns(self):
        from bench.bare_loop import Turns

        return Turns(self.turn_file, self.turn_me, self.turn_next) if self.turn_file else None


@dataclass(repr=False)
class TurnTakingMnistExp(MnistExp):
    """The MNIST example, taking epoch turns with other jobs (`bench.bare_loop.Turns`).

    Its epochs are the example's own loop, untouched: the turn is taken when an epoch's
    batches start (`TrainingSession.batches`) and handed over before the next one (so after
    validation and checkpointing) and when training ends, so the other jobs never overlap
    any of this job's work.
    """

    turn_file: str = ""  # empty: no turns, the plain example
    turn_me: str = "tinyexp"
    turn_next: str = "bare"

    def train(self) -> Any:
        if not self.turn_file:
            return super().train()
        from tinyexp_core.training import TrainingSession

        original = TrainingSession.batches
        exp = self

        def turn_taking_batches(session: Any, loader: Any) -> Any:
            exp._take_turn(session)
            # The session's epoch clock started at `epochs()`, before this wait for the turn:
            # restart it, or the other jobs' epochs count as this one's (item 1 read 0.33).
            session._loop.t0 = time.perf_counter()
            start_cpu = time.thread_time()
            yield from original(session, loader)
            exp._loop_cpu_s = time.thread_time() - start_cpu

        original_end = TrainingSession.end_epoch

        def end_epoch_recording_cpu(session: Any, **kwargs: Any) -> Any:
            record = original_end(session, **kwargs)
            if session.is_main_process:
                # The samples per CPU-second of the loop's thread, for bench.training_overhead.
                samples = record.samples_per_s * record.epoch_time_s
                with open(f"{exp.turn_file}.{exp.turn_me}.cpu", "a") as f:
                    f.write(f"{samples / exp._loop_cpu_s}\n")
            return record

        try:
            TrainingSession.batches = turn_taking_batches  # type: ignore[method-assign]
            TrainingSession.end_epoch = end_epoch_recording_cpu  # type: ignore[method-assign]
            return super().train()
        finally:
            TrainingSession.batches = original  # type: ignore[method-assign]
            TrainingSession.end_epoch = original_end  # type: ignore[method-assign]
            if getattr(self, "_holding", False):
                self._turns().hand_over()

    def _take_turn(self, session: Any) -> None:
        if session.is_main_process:
            if getattr(self, "_holding", False):
                self._turns().hand_over()
            self._turns().wait()
            self._holding = True
        session.accelerator.wait_for_everyone()

    def _turns(self):
        from bench.bare_loop import Turns

        return Turns(self.turn_file, self.turn_me, self.turn_next)
