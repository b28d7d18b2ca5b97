"""Plumbing a recipe (an example experiment) shares, so its file shows only the loop.

- `main_process_first`: rank 0 does idempotent work (data preparation) while the others
  wait, then the others do the same work, which finds the result and returns at once.
- `resolve_resume`: which checkpoint `resume_from` names (`auto`, a file, a run directory).
- `reporting`: the progress reporter's lifecycle: a final status on every exit, then close.
- `resume_run`: restore what `resolve_resume` found; where the loop continues (mid-epoch
  from a step checkpoint, with this rank's RNG).
- `StepCheckpoints`: the loop's `after_step` hook: checkpoint-then-stop on a stop request,
  and periodic step checkpoints (`checkpoint_cfg.every_n_steps` / `every_s`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tinyexp_core import storage
from tinyexp_core.contract import EpochRecord
from tinyexp_core.training.step_checkpoint import (
    DataPosition,
    StepCheckpointWriter,
    gather_objects,
    resume_position,
    rng_state,
)
from tinyexp_core.training.stop import StopAgreement, stop_on_signals, stop_reason

T = TypeVar("T")

__all__ = [
    "Resumed",
    "StepCheckpoints",
    "main_process_first",
    "reporting",
    "resolve_resume",
    "resume_run",
]


def main_process_first(accelerator: Any, work: Callable[[], T]) -> T:
    """`work()` on rank 0, a barrier, then `work()` on the other ranks; returns its value."""
    if accelerator.is_main_process:
        result = work()
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        result = work()
    return result


def resolve_resume(
    resume_from: str, checkpoint_cfg: Any, run_dir: str, logger: Any
) -> tuple[str, dict[str, Any]] | None:
    """(path, state) of the checkpoint to resume from, or None for a fresh start.

    `auto`: this run directory's last valid checkpoint, if any. A directory: its (or its
    `checkpoints/`) last valid checkpoint, which must exist. A file: that file; when it is
    corrupt, the newest valid checkpoint beside it, with a warning.
    """
    from tinyexp_core import checkpoint as ckpt
    from tinyexp_core.config.exceptions import CheckpointCorruptError, CheckpointNotFoundError

    if not resume_from:
        return None
    if resume_from == "auto":
        return checkpoint_cfg.build_manager(run_dir).latest_valid()
    # An object-store URI (`s3://.../checkpoints/last.pt`, or a folder) is fetched into
    # this node's mirror, verified; a local path is used as it is.
    path = storage.localize(resume_from)
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = ckpt.CheckpointManager(directory).latest_valid()
        if found is None:
            raise CheckpointNotFoundError(str(directory))
        return found
    try:
        return str(path), ckpt.load_checkpoint(path)
    except CheckpointCorruptError as err:
        found = ckpt.CheckpointManager(path.parent).latest_valid()
        if found is None:
            raise
        logger.warning(f"{err}; falling back to {found[0]}")
        return found


def check_experiment_class(exp: Any, path: str, state: dict[str, Any]) -> None:
    """Refuse a checkpoint another experiment class saved (ConfigValueError naming
    `resume_from`); the experiment's own class, a parent or a subclass of it is fine."""
    from tinyexp_core.config.exceptions import ConfigError, ConfigValueError
    from tinyexp_core.config.factory import load_exp_class

    saved, current = str(state.get("exp_class") or ""), str(getattr(exp, "exp_class", ""))
    if not saved or not current or saved == current:
        return
    try:
        saved_cls = load_exp_class(saved)
    except ConfigError:
        saved_cls = None
    mine = type(exp)
    if saved_cls is not None and (issubclass(mine, saved_cls) or issubclass(saved_cls, mine)):
        return
    allowed = f"a checkpoint of {current} (this one was saved by {saved})"
    raise ConfigValueError("resume_from", path, allowed)


@dataclass
class Resumed:
    """Where a run continues: its data position, global step, history so far and the file."""

    position: DataPosition = field(default_factory=DataPosition)
    step: int = 0  # global optimizer steps done
    history: list[EpochRecord] = field(default_factory=list)
    path: str = ""  # the checkpoint resumed from; "" for a fresh start
    tracked: dict[str, Any] = field(default_factory=dict)  # the tracker run to continue


def resume_run(
    found: tuple[str, dict[str, Any]] | None,
    *,
    accelerator: Any,
    num_steps: int,
    model: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    logger: Any,
) -> Resumed:
    """Load `resolve_resume`'s (path, state) into the model, optimizer and scheduler.

    An epoch checkpoint continues at the next epoch; a step checkpoint inside its epoch,
    with this rank's RNG restored (`num_steps`: batches per epoch, which must match).
    """
    from tinyexp_core import checkpoint as ckpt

    if found is None:
        return Resumed()
    path, state = found
    ckpt.restore(state, model=model, optimizer=optimizer, scheduler=scheduler, path=path)
    position = resume_position(
        state,
        rank=accelerator.rank,
        world_size=accelerator.world_size,
        num_steps=num_steps,
        path=path,
    )
    saved = (state.get("extra") or {}).get("history", [])
    step = int(state["step"])
    logger.info(
        f"resumed from {path} at epoch {position.epoch}, "
        f"step {position.step_in_epoch} of it, global step {step}"
    )
    history = [EpochRecord.from_dict(r) for r in saved]
    tracked = dict((state.get("extra") or {}).get("tracker") or {})
    return Resumed(position, step, history, path, tracked)


class StepCheckpoints:
    """The training loop's `after_step(step, position)`: stops and periodic step checkpoints.

    After each optimizer step the ranks decide, identically (`StopAgreement`, agreeing every
    `checkpoint_cfg.agree_every_s` seconds), whether to stop or save. A
    save snapshots the state and writes it in the background (so does `save_epoch`, the
    epoch's checkpoint, through the same one-in-flight writer); a stop writes it now (rank 0),
    waits for every rank, and raises `RunStoppedError` on all of them. `fields()` returns
    the checkpoint's own fields (`model`, `optimizer`, `scheduler`, `config`, `exp_class`,
    `extra`: see `checkpoint.build_checkpoint`); epoch, step, position and every rank's RNG
    are added here. Enter it around the epoch loop: inside, SIGTERM/SIGINT request a stop,
    and a write in flight finishes before the loop's exit goes on.
    """

    def __init__(
        self,
        accelerator: Any,
        manager: Any,
        *,
        checkpoint_cfg: Any,
        num_steps: int,
        sampler_seed: int,
        fields: Callable[[], dict[str, Any]],
        reporter: Any,
        logger: Any,
    ) -> None:
        self._acc = accelerator
        self._num_steps = num_steps
        self._sampler_seed = sampler_seed
        self._fields = fields
        self._logger = logger
        self._stopper = StopAgreement(
            accelerator,
            every_n_steps=checkpoint_cfg.every_n_steps,
            every_s=checkpoint_cfg.every_s,
            # A config class of a user's own may predate the field: agree after every step.
            agree_every_s=getattr(checkpoint_cfg, "agree_every_s", 0.0),
        )
        self._writer = StepCheckpointWriter(
            manager, on_saved=lambda p, s: reporter.checkpoint(path=p, epoch=s["epoch"])
        )
        self._stack = contextlib.ExitStack()

    def __call__(self, step: int, position: DataPosition | Callable[[], DataPosition]) -> None:
        """After optimizer step `step`; `position` (or a callable returning it, read only
        when a checkpoint is due) is where the data stands after it."""
        self._writer.check()  # a failed background write ends the run at this step
        stop, save = self._stopper.poll(step)
        if not (stop or save):
            return
        # A collective: every rank takes part.
        state = self.build(position() if callable(position) else position, step)
        if stop:
            self._stop(state, step)
        elif state is not None:
            self._writer.submit(state)

    def build(self, position: DataPosition, step: int) -> dict[str, Any] | None:
        """The step checkpoint dict on rank 0 (None elsewhere); a collective."""
        from tinyexp_core import checkpoint as ckpt

        ranks = gather_objects(self._acc, (position, rng_state()))
        if not self._acc.is_main_process:
            return None
        return ckpt.build_checkpoint(
            **self._fields(),
            epoch=position.epoch,
            step=step,
            position=position.to_dict(
                num_steps=self._num_steps,
                world_size=self._acc.world_size,
                sampler_seed=self._sampler_seed,
                ranks=[here for here, _ in ranks],
            ),
            rng_ranks=[rng for _, rng in ranks],
        )

    def save_epoch(
        self,
        state: dict[str, Any],
        *,
        is_best: bool,
        on_saved: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        """Rank 0: write an epoch checkpoint (`CheckpointManager.save`) in the background,
        after any write in flight; `on_saved(paths)` once it is on disk. The state is
        snapshotted now, so the next epoch's steps cannot change what is written; leaving
        the `with` block waits for the write (also when the run fails: never half a file)."""

        def save(snap: dict[str, Any]) -> None:
            paths = self._writer.manager.save(snap, is_best=is_best)
            if on_saved is not None:
                on_saved(paths)

        self._writer.submit(state, save)

    def wait(self) -> None:
        """Wait for the checkpoint write in flight (raises its error if it failed)."""
        self._writer.wait()

    def _stop(self, state: dict[str, Any] | None, step: int) -> None:
        """Rank 0 writes the stop checkpoint, every rank waits for it, then all raise."""
        from tinyexp_core.config.exceptions import RunStoppedError

        path = self._writer.save_now(state) if state is not None else ""
        self._acc.wait_for_everyone()
        if self._acc.is_main_process:
            self._logger.warning(f"stopped at step {step} ({stop_reason()}); checkpoint {path}")
        raise RunStoppedError(path, step, stop_reason())

    def __enter__(self) -> StepCheckpoints:
        self._stack.enter_context(self._writer)
        self._stack.enter_context(stop_on_signals())
        self._stack.push(self._close_agreement)  # runs first on exit, the writer's wait last
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        return self._stack.__exit__(*exc)

    def _close_agreement(self, exc_type: Any, *_: Any) -> None:
        """On the way out of the loop: every rank got here through the same steps, so the
        agreement in flight completes. A failing run skips it (a peer that died would leave
        it waiting out the collective timeout); the process group goes with the run."""
        if exc_type is None:
            self._stopper.close()


@contextlib.contextmanager
def reporting(reporter: Any) -> Iterator[Any]:
    """Yield the reporter; finish it `succeeded`, `failed` or `cancelled`, then close it."""
    try:
        yield reporter
    except BaseException as err:  # Ctrl-C and a Ray/Dagster stop are cancellations
        from tinyexp_core.config.exceptions import RunStoppedError

        # A checkpoint-then-stop already reported its checkpoint (`last_checkpoint`).
        cancelled = isinstance(err, (KeyboardInterrupt, SystemExit, RunStoppedError))
        reporter.finish(
            "cancelled" if cancelled else "failed", error=f"{type(err).__name__}: {err}"
        )
        reporter.close()
        raise
    reporter.finish("succeeded")
    reporter.close()


@contextlib.contextmanager
def tracking(tracker: Any) -> Iterator[Any]:
    """Yield the experiment tracker; close it as failed when the run raises (a successful
    run finishes it with its summary, which only the recipe has)."""
    try:
        yield tracker
    except BaseException:
        tracker.finish(failed=True)
        raise
