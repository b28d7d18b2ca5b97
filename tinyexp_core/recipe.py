"""Plumbing a recipe (an example experiment) shares, so its file shows only the loop.

- `main_process_first`: rank 0 does idempotent work (data preparation) while the others
  wait, then the others do the same work, which finds the result and returns at once.
- `resolve_resume`: which checkpoint `resume_from` names (`auto`, a file, a run directory).
- `reporting`: the progress reporter's lifecycle: a final status on every exit, then close.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["main_process_first", "reporting", "resolve_resume"]


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
    from tinyexp_core.exceptions import CheckpointCorruptError, CheckpointNotFoundError

    if not resume_from:
        return None
    if resume_from == "auto":
        return checkpoint_cfg.build_manager(run_dir).latest_valid()
    path = Path(resume_from)
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


@contextlib.contextmanager
def reporting(reporter: Any) -> Iterator[Any]:
    """Yield the reporter; finish it `succeeded`, `failed` or `cancelled`, then close it."""
    try:
        yield reporter
    except BaseException as err:  # Ctrl-C and a Ray/Dagster stop are cancellations
        from tinyexp_core.exceptions import RunStoppedError

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
