"""Experiment tracking on Weights & Biases: one W&B run per training run, rank 0 only.

`WandbCfg.build_tracker` returns a `WandbTracker` on the main process when tracking is on
and a `NullTracker` everywhere else, so a training loop calls `log` and `finish` without
asking which one it holds. The W&B run lives under `<run_dir>/wandb`; in the default
offline mode nothing leaves the machine and no credentials are needed.

A run that resumes from a checkpoint continues the W&B run that wrote it: the checkpoint
carries `resume_state()` (`{"wandb_run_id": ...}`) and the resumed run passes it back to
`build_tracker(..., resume=...)`, which opens the same run id with `resume="allow"`. Rows
are logged at the global optimizer step, so the resumed rows follow the checkpoint's step.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from pathlib import Path
from typing import Any

__all__ = ["NullTracker", "WandbTracker", "start_wandb_run"]


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The finite numbers and the strings of `metrics` (W&B charts numbers; lists stay out)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or isinstance(value, str):
            out[key] = value
        elif isinstance(value, numbers.Real) and math.isfinite(float(value)):
            out[key] = value
    return out


class NullTracker:
    """Tracking that is off (disabled, or not the main process): every call does nothing."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Record nothing."""

    def resume_state(self) -> dict[str, str]:
        """No run to continue."""
        return {}

    def finish(self, summary: dict[str, Any] | None = None, *, failed: bool = False) -> dict:
        """Nothing to close; no run to record."""
        return {}


class WandbTracker:
    """A started W&B run: per-epoch rows via `log`, final metrics and close via `finish`."""

    def __init__(self, run: Any) -> None:
        self._run = run

    @property
    def run_id(self) -> str:
        return str(self._run.id)

    @property
    def run_dir(self) -> str:
        """The W&B run's own directory (`<run_dir>/wandb/offline-run-...` when offline)."""
        return str(Path(self._run.dir).parent)

    def resume_state(self) -> dict[str, str]:
        """What a checkpoint stores so that a resumed run continues this W&B run."""
        return {"wandb_run_id": self.run_id}

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """One history row (numbers and strings of `metrics`) at `step`."""
        self._run.log(_scalars(metrics), step=step)

    def finish(self, summary: dict[str, Any] | None = None, *, failed: bool = False) -> dict:
        """Store the final metrics, close the run; returns `wandb_run_id` and `wandb_dir`."""
        record = {"wandb_run_id": self.run_id, "wandb_dir": self.run_dir}
        if failed:
            # cleanup on the way out of a failed run: never mask the run's own error
            with contextlib.suppress(Exception):
                self._close(exit_code=1)
            return record
        if summary:
            self._run.summary.update(_scalars(summary))
        self._close(exit_code=0)
        return record

    def _close(self, exit_code: int) -> None:
        import wandb

        self._run.finish(exit_code=exit_code)
        if wandb.run is None:
            # W&B's service process writes the run's file after finish() returns; stopping
            # it (when no other run uses it) flushes, so the files are complete on return.
            wandb.teardown()


def start_wandb_run(
    *,
    project: str,
    mode: str,
    run_dir: str,
    name: str,
    config: dict[str, Any],
    run_id: str = "",
) -> WandbTracker:
    """Start a W&B run under `<run_dir>/wandb` that captures nothing but what is logged;
    with `run_id`, continue that run (`resume="allow"`: offline, the id is kept and the
    rows go to a new `offline-run-*` folder, which a sync appends to the same run)."""
    import wandb

    # wandb.init does not create `dir`, and falls back to a temp dir without it.
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(
        console="off",  # the run's log file already holds the terminal output
        x_disable_stats=True,  # no system-metrics sampler thread
        x_disable_machine_info=True,
        disable_git=True,
        save_code=False,
        silent=True,
    )
    run = wandb.init(
        project=project,
        mode=mode,
        dir=run_dir,
        name=name,
        config=config,
        settings=settings,
        reinit="create_new",
        id=run_id or None,
        resume="allow" if run_id else None,
    )
    return WandbTracker(run)
