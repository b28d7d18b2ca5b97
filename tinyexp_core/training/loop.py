"""The state behind a `TrainingSession`'s loop calls: position, counters, files, progress.

`TrainingSession.setup` builds one `_Loop`; `epochs`, `batches`, `step` and `end_epoch`
delegate here. It registers its progress reporter, tracker and step checkpoints on the
session's exit stack, so whatever ends the `with` block (success, an error, a stop) writes
the final status, waits for the checkpoint in flight and closes the tracker.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from tinyexp_core.contract import EpochRecord, val_key
from tinyexp_core.lazy import lazy_module
from tinyexp_core.timing import mark
from tinyexp_core.training.recipe import Resumed, StepCheckpoints, reporting
from tinyexp_core.training.step_checkpoint import DataPosition

if TYPE_CHECKING:
    import torch

    from tinyexp_core.training.session import TrainingSession
else:
    torch = lazy_module("torch")
T = TypeVar("T")

# An epoch starts with torch seeded from (seed, epoch, rank): a run resumed at an epoch
# boundary draws the same dropout masks as one that never stopped (mid-epoch, the step
# checkpoint's RNG states take over).
EPOCH_SEED_STRIDE = 1000


def _takes_start_step(set_epoch: Callable[..., object]) -> bool:
    """Whether a loader's `set_epoch` can start inside the epoch (`start_step=`)."""
    try:
        return "start_step" in inspect.signature(set_epoch).parameters
    except (TypeError, ValueError):
        return False


class _Loop:
    """One session's training loop state (see the module doc)."""

    def __init__(
        self,
        session: TrainingSession,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        extra: Callable[[], Mapping[str, object]] | None,
        resumed: Resumed,
        num_epochs: int,
        num_steps: int,
    ) -> None:
        exp = session.exp
        self.s = session
        self.model, self.optimizer, self.scheduler, self.extra = model, optimizer, scheduler, extra
        self.num_epochs, self.num_steps = int(num_epochs), int(num_steps)
        self.position, self.global_step = resumed.position, resumed.step
        self.first_new = len(resumed.history)  # epochs trained by this attempt start here
        self.manager = exp.checkpoint_cfg.build_manager(session.run_dir)
        self.reporter = exp.progress_cfg.build_reporter(
            session.context.progress_run_id or exp.run_id, is_main_process=session.is_main_process
        )
        self.reporter.start(
            asset=session.context.asset,
            num_epochs=self.num_epochs,
            num_steps=self.num_steps,  # per epoch, as the progress contract says
            world_size=session.world_size,
            attempt=session.context.attempt,
        )
        self.tracker = exp.wandb_cfg.build_tracker(
            session.run_dir,
            config=exp.config_dict(),
            name=exp.run_id,
            is_main_process=session.is_main_process,
            resume=resumed.tracked,
        )
        self.tracked = self.tracker.resume_state()  # every checkpoint names it: resume continues
        self._tracker_done = False
        self.checkpoints = StepCheckpoints(
            session.accelerator,
            self.manager,
            checkpoint_cfg=exp.checkpoint_cfg,
            num_steps=self.num_steps,
            sampler_seed=exp.seed,
            fields=self.fields,
            reporter=self.reporter,
            logger=session.logger,
        )
        # Unwound in reverse: the checkpoint in flight lands, then the tracker and the
        # final status, then (registered at enter) the accelerator goes.
        session._stack.enter_context(reporting(self.reporter))
        session._stack.enter_context(self._tracking())
        session._stack.enter_context(self.checkpoints)
        self.epoch, self.epoch_ended, self._marked_first = -1, True, False
        self._throttle_s, self._logged_at = float(exp.progress_cfg.throttle_s), -math.inf

    # ------------------------------------------------------------------ records
    def extra_state(self) -> dict[str, object]:
        """The checkpoint's `extra`: history so far, the tracker run, the experiment's own."""
        return {
            "history": [r.to_dict() for r in self.s.history],
            "tracker": dict(self.tracked),
            "user": dict(self.extra()) if self.extra is not None else {},
        }

    def fields(self) -> dict[str, object]:
        """What every checkpoint holds (`checkpoint.build_checkpoint`'s own fields)."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "config": self.s.exp.config_dict(),
            "exp_class": self.s.exp.exp_class,
            "extra": self.extra_state(),
        }

    def finish_tracker(self, summary: dict[str, Any] | None) -> dict[str, str]:
        self._tracker_done = True
        return self.tracker.finish(summary)

    @contextlib.contextmanager
    def _tracking(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            if not self._tracker_done:
                self.tracker.finish(failed=True)
            raise
        if not self._tracker_done:
            self.finish_tracker(None)

    # ------------------------------------------------------------------ one epoch
    def begin_epoch(self, epoch: int) -> None:
        if self.position.epoch != epoch:
            self.position = DataPosition(epoch=epoch)
        if self.position.step_in_epoch == 0:
            torch.manual_seed(self.s.exp.seed + EPOCH_SEED_STRIDE * epoch + self.s.rank)
        self.epoch, self.epoch_ended = epoch, False
        self.step_in_epoch = self.position.step_in_epoch
        self.loss_sum: torch.Tensor | float = (
            self.position.loss_sum
        )  # a float64 tensor after the first step
        self.seen = self.position.seen
        self.t0, self.elapsed, self.lr = time.perf_counter(), None, math.nan

    def batches(self, loader: Iterable[T]) -> Iterator[T]:
        start = self.step_in_epoch
        set_epoch = getattr(loader, "set_epoch", None)
        if set_epoch is not None and _takes_start_step(set_epoch):
            set_epoch(self.epoch, start_step=start)
            batches: Iterator[T] = iter(loader)
        else:
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)  # the order depends on seed and epoch only
            elif set_epoch is not None:
                set_epoch(self.epoch)
            # Mid-epoch, the batches done before the stop are drawn and dropped.
            batches = itertools.islice(self._iter_keeping_rng(loader, start), start, None)
        yield from batches
        self.elapsed = time.perf_counter() - self.t0
        self.lr = self._lr()
        self.reporter.heartbeat()  # validation comes next; it is not a stall

    @staticmethod
    def _iter_keeping_rng(loader: Iterable[T], start: int) -> Iterator[T]:
        """`iter(loader)`; resuming mid-epoch, without touching torch's global RNG: a torch
        DataLoader draws its base seed from it on `iter`, which the uninterrupted run did
        before the RNG state the step checkpoint restored."""
        if start == 0:
            return iter(loader)
        state = torch.get_rng_state()
        batches = iter(loader)
        torch.set_rng_state(state)
        return batches

    def _lr(self) -> float:
        groups = getattr(self.optimizer, "param_groups", None)
        return float(groups[0]["lr"]) if groups else math.nan

    def step(self, loss: torch.Tensor, batch_size: int) -> None:
        self.global_step += 1
        self.step_in_epoch += 1
        if not self._marked_first:
            self._marked_first = True
            mark(f"first_step_rank{self.s.rank}")
        # Summed on the loss's device: no transfer per step, read at checkpoints and epoch end.
        self.loss_sum = loss.detach().double() * batch_size + self.loss_sum
        self.seen += int(batch_size)
        now = time.perf_counter()
        # Read the loss off the device only at the progress cadence (`throttle_s`).
        if self.reporter.wants_step() or now - self._logged_at >= self._throttle_s:
            self._logged_at = now
            value = loss.detach().item()
            self.reporter.step(
                epoch=self.epoch,
                step=self.step_in_epoch - 1,
                loss=value,
                lr=self._lr(),
                samples_per_s=self.seen * self.s.world_size / max(now - self.t0, 1e-9),
            )
            self.s.logger.debug(f"epoch {self.epoch} step {self.global_step} loss {value:.4f}")
        self.checkpoints(self.global_step, self._position_now)

    def _position_now(self) -> DataPosition:
        return DataPosition(self.epoch, self.step_in_epoch, float(self.loss_sum), self.seen)

    def end_epoch(self, val_loss: float, metrics: dict[str, float]) -> EpochRecord:
        acc = self.s.accelerator
        elapsed = self.elapsed if self.elapsed is not None else time.perf_counter() - self.t0
        sums = torch.tensor([float(self.loss_sum), float(self.seen)], dtype=torch.float64)
        totals = acc.reduce_sum(sums)
        record = EpochRecord(
            epoch=self.epoch,
            step=self.global_step,
            train_loss=float(totals[0]) / max(float(totals[1]), 1.0),
            val_loss=float(val_loss),
            metrics={k: float(v) for k, v in metrics.items()},
            lr=self.lr if not math.isnan(self.lr) else self._lr(),
            samples_per_s=float(totals[1]) / max(elapsed, 1e-9),
            epoch_time_s=elapsed,
        )
        self.s.history.append(record)
        self.position, self.epoch_ended = DataPosition(epoch=self.epoch + 1), True
        # At the global optimizer step: a resumed run's rows follow its checkpoint's.
        self.tracker.log(record.to_row(), step=record.step)
        best = self._save_epoch(record)
        event = {val_key(k): v for k, v in record.metrics.items()}
        event.update(val_loss=record.val_loss, best_metric=best)
        self.reporter.epoch_end(epoch=self.epoch, loss=record.train_loss, metrics=event)
        if self.s.is_main_process:
            shown = " ".join(f"{val_key(k)} {v:.4f}" for k, v in record.metrics.items())
            self.s.logger.info(
                f"epoch {self.epoch + 1}/{self.num_epochs} train_loss {record.train_loss:.4f} "
                f"val_loss {record.val_loss:.4f} {shown} {record.samples_per_s:.0f} samples/s"
            )
        return record

    def _save_epoch(self, record: EpochRecord) -> float:
        """Rank 0 snapshots the epoch checkpoint, written in the background while the next
        epoch trains (leaving the session waits for it); returns the best metric so far."""
        from tinyexp_core import checkpoint as ckpt

        metric = self.s.primary_metric
        if metric is None:  # nothing ranks epochs: the last one is the best
            best, is_best = math.nan, True
        else:
            best = metric.best(r.metrics.get(metric.name, math.nan) for r in self.s.history)
            current = record.metrics.get(metric.name, math.nan)
            is_best = metric.is_at_least_as_good(current, best)
        if self.s.is_main_process:
            state = ckpt.build_checkpoint(
                **self.fields(),
                epoch=record.epoch,
                step=record.step,
                metrics={"train_loss": record.train_loss, **record.metrics},
            )

            def saved(paths: dict[str, str], epoch: int = record.epoch) -> None:
                shown = None if metric is None else best
                self.reporter.checkpoint(path=paths["last"], epoch=epoch, best_metric=shown)

            self.checkpoints.save_epoch(state, is_best=is_best, on_saved=saved)
        return best
