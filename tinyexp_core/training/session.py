"""The training session: everything around a `train()` loop, so the loop reads top to bottom.

```python
def train(self) -> TrainResult:
    with TrainingSession(self) as session:
        loader = ...                                   # this rank's shard
        model, optimizer = ..., ...
        model = session.setup(model, optimizer, num_epochs=5, num_steps=len(loader))
        for epoch in session.epochs():
            model.train()
            for x, y in session.batches(loader):
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                session.backward(loss)
                optimizer.step()
                session.step(loss, len(y))
            session.end_epoch(val_loss=..., metrics={"accuracy": ...})
        return session.result()
```

The session owns the accelerator (built from `accelerator_cfg`, destroyed on exit), the run
directory and logger, resume (`resume_from`: epoch or mid-epoch, with every rank's RNG and
data position), epoch and step checkpoints from the one description `setup` gets, stop
requests (SIGTERM/SIGINT, Dagster terminate, sweep pruning) agreed at the same step on every
rank, progress in Redis (asset, attempt and run id from the orchestrator), the W&B tracker
(continued on resume), the history rows and the `TrainResult`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from tinyexp_core.contract import Checkpoints, EpochRecord, PrimaryMetric, TrainResult
from tinyexp_core.timing import mark
from tinyexp_core.training.context import RunContext
from tinyexp_core.training.loop import _Loop

if TYPE_CHECKING:
    from types import TracebackType

    import torch
    from loguru import Logger

    from tinyexp_core.accelerators.base import Accelerator
    from tinyexp_core.config.experiment import TinyExp

T = TypeVar("T")

__all__ = ["TrainingSession"]


class TrainingSession:
    """Everything around one `train()` loop; enter it on every rank (see the module doc)."""

    def __init__(self, exp: TinyExp) -> None:
        self.exp = exp
        self.context = RunContext.from_env()
        self.history: list[EpochRecord] = []  # every epoch so far, resumed ones included
        self.restored_extra: dict[str, object] = {}  # `extra()` as the resumed checkpoint saved it
        self.resumed_from = ""  # the checkpoint this attempt continues, "" on a fresh start
        self._stack = contextlib.ExitStack()
        self._loop: _Loop | None = None
        self._primary_warned = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> TrainingSession:
        self._started = time.perf_counter()
        cfg = getattr(self.exp, "accelerator_cfg", None)
        if cfg is None:
            from tinyexp_core.accelerators import CPUAccelerator

            self.accelerator: Accelerator = CPUAccelerator()
        else:
            self.accelerator = cfg.build_accelerator()
        self._stack.callback(self.accelerator.destroy)  # runs last
        self.run_dir = self.exp.ensure_run_dir()
        # Rank 0's lines also go to the launcher's forwarder (the Dagster step log).
        self.logger: Logger = self.exp.logger_cfg.build_logger(
            self.run_dir, distributed_rank=self.rank
        )
        if self.is_main_process:
            self.logger.info(
                f"run {self.exp.run_id} in {self.run_dir}, world size {self.world_size}"
            )
            self.logger.info(f"overrides: {self.exp.overrided_cfg or 'none'}")
        mark(f"process_group_ready_rank{self.rank}")
        self._resume_from = self._find_resume()
        return self

    def _find_resume(self) -> tuple[str, dict[str, Any]] | None:
        """The checkpoint `resume_from` names (None: a fresh start), read and checked before
        any data or model work: a missing, corrupt or foreign checkpoint fails here."""
        from tinyexp_core.training.recipe import check_experiment_class, resolve_resume

        exp = self.exp
        found = resolve_resume(exp.resume_from, exp.checkpoint_cfg, self.run_dir, self.logger)
        if found is not None:
            check_experiment_class(exp, *found)
        return found

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self._stack.__exit__(exc_type, exc, tb)

    @property
    def rank(self) -> int:
        return self.accelerator.rank

    @property
    def world_size(self) -> int:
        return self.accelerator.world_size

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def model(self) -> torch.nn.Module:
        """The model `setup` got (not DDP-wrapped): what checkpoints hold."""
        return self._require_loop().model

    @property
    def epoch(self) -> int:
        """The epoch in progress (0-based; -1 before the first)."""
        return self._require_loop().epoch

    @property
    def global_step(self) -> int:
        """Optimizer steps done so far, resumed ones included."""
        return self._require_loop().global_step

    @property
    def primary_metric(self) -> PrimaryMetric | None:
        return getattr(self.exp, "primary_metric", None)

    def main_process_first(self, work: Callable[[], T]) -> T:
        """`work()` on rank 0, a barrier, then on the other ranks (idempotent work such as
        preparing data: the others find rank 0's result); returns its value."""
        acc = self.accelerator
        if acc.is_main_process:
            result = work()
        acc.wait_for_everyone()
        if not acc.is_main_process:
            result = work()
        return result

    def backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()` through the accelerator (gradient sync, mixed precision)."""
        self.accelerator.backward(loss)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The accelerator's mixed-precision context (a no-op on CPU)."""
        return self.accelerator.autocast()

    # ------------------------------------------------------------------ setup
    def setup(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        *,
        num_epochs: int,
        num_steps: int,
        extra: Callable[[], Mapping[str, object]] | None = None,
    ) -> torch.nn.Module:
        """Describe the checkpoint once (model, optimizer, scheduler, `extra()` state), resume
        from `resume_from` when set, start progress and tracking; returns the model ready for
        training (DDP-wrapped on several ranks). `num_steps`: batches per epoch on this rank.
        Build the model with the same seed on every rank before calling it."""
        from tinyexp_core.training.recipe import resume_run

        exp, found = self.exp, self._resume_from
        resumed = resume_run(
            found,
            accelerator=self.accelerator,
            num_steps=num_steps,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            logger=self.logger,
        )
        self.history, self.resumed_from = resumed.history, resumed.path
        if found is not None:
            self.restored_extra = dict((found[1].get("extra") or {}).get("user") or {})
        if self.is_main_process:
            # After the resume check: a config the run's checkpoints reject must not
            # replace their description.
            exp.dump_config(self.run_dir)
            self.logger.info("effective config:\n" + exp.config_yaml())
        # Registered before the loop's own exits, so it runs after them: the checkpoint in
        # flight is written, then uploaded (a remote storage root only).
        self._stack.callback(self._publish_run)
        self._loop = _Loop(self, model, optimizer, scheduler, extra, resumed, num_epochs, num_steps)
        mark(f"dataset_loaded_rank{self.rank}")
        return self.accelerator.prepare_model(model)

    def _require_loop(self) -> _Loop:
        if self._loop is None:
            raise RuntimeError("call session.setup(model, ...) before the training loop")
        return self._loop

    # ------------------------------------------------------------------ the loop
    def epochs(self) -> Iterator[int]:
        """The epochs still to train (from the resumed one); an epoch the loop body did not
        end with `end_epoch` is ended without validation metrics."""
        loop = self._require_loop()
        for epoch in range(loop.position.epoch, loop.num_epochs):
            loop.begin_epoch(epoch)
            yield epoch
            if not loop.epoch_ended:
                self.end_epoch()

    def batches(self, loader: Iterable[T]) -> Iterator[T]:
        """This epoch's batches of `loader`, from the resumed position mid-epoch. The
        loader's order is set for the epoch (`set_epoch` on it or on its sampler)."""
        return self._require_loop().batches(loader)

    def step(self, loss: torch.Tensor, batch_size: int) -> None:
        """After `optimizer.step()`: count the step, report progress (throttled), and act on
        a stop request (every rank checkpoints at the same step) or a due step checkpoint."""
        self._require_loop().step(loss, batch_size)

    def end_epoch(
        self, *, val_loss: float = math.nan, metrics: dict[str, float] | None = None
    ) -> EpochRecord:
        """Close the epoch with its validation loss and metrics (by name, e.g. `accuracy`):
        the history row, the epoch checkpoint (written in the background), progress and
        tracking. Call it on every rank (it sums the epoch's loss across ranks)."""
        metrics = dict(metrics or {})
        metric = self.primary_metric
        if metric and metrics and metric.name not in metrics and not self._primary_warned:
            self._primary_warned = True
            self.logger.warning(
                f"end_epoch metrics {sorted(metrics)} lack the primary metric {metric.name!r}: "
                "best.pt and the champion cannot rank this run"
            )
        return self._require_loop().end_epoch(val_loss, metrics)

    @property
    def last_checkpoint_path(self) -> str:
        """Where the latest epoch checkpoint (`last.pt`) is written."""
        return str(self._require_loop().manager.last_path)

    def _publish_run(self) -> None:
        """Rank 0 with a remote storage root: wait for the checkpoint uploads (raises
        `UploadFailedError` naming the file kept on local disk), then upload the run's
        records (config.yaml, logs, history) beside them."""
        loop = self._loop
        if loop is None or not loop.manager.remote or not self.is_main_process:
            return
        from pathlib import Path

        from tinyexp_core import storage

        loop.manager.flush_uploads()
        for entry in Path(self.run_dir).iterdir():
            if entry != loop.manager.directory and not entry.name.startswith("."):
                storage.publish(entry)

    def flush_checkpoints(self) -> None:
        """Wait for the checkpoint being written in the background (raises its error)."""
        self._require_loop().checkpoints.wait()

    def result(self) -> TrainResult:
        """The run as a `TrainResult` (rank 0's view); closes the tracker with its summary."""
        loop = self._require_loop()
        metric = self.primary_metric
        if metric is None:
            from tinyexp_core.config.exceptions import ConfigValueError

            name = type(self.exp).__name__
            raise ConfigValueError(f"{name}.primary_metric", None, "a PrimaryMetric(name, dir)")
        trained_now = [r.samples_per_s for r in self.history[loop.first_new :]]
        from tinyexp_core.storage import to_uri

        # With a remote storage root the paths are URIs: another node reads the bucket.
        result = TrainResult(
            run_id=self.exp.run_id,
            run_dir=to_uri(self.run_dir),
            checkpoints=Checkpoints(
                best=to_uri(loop.manager.best_path), last=to_uri(loop.manager.last_path)
            ),
            history=self.history,
            primary_metric=metric,
            wall_time_s=time.perf_counter() - self._started,
            world_size=self.world_size,
            config=self.exp.config_dict(),
            resumed_from=to_uri(self.resumed_from) if self.resumed_from else "",
            samples_per_s=sum(trained_now) / len(trained_now) if trained_now else math.nan,
        )
        result.tracker.update(loop.finish_tracker(result.to_dict()))
        best = result.best_record
        if self.is_main_process and best is not None:
            self.logger.info(
                f"best {metric.val_key} {result.best_value:.4f} at epoch {best.epoch + 1}"
            )
        return result
