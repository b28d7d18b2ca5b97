"""Per-rank loguru setup, and the logger / wandb config blocks of an experiment."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.launchers.runtime import get_log_forwarder
from tinyexp_core.redaction import redact_text

__all__ = ["LoggerCfg", "WandbCfg", "tiny_logger_setup"]

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
FILE_MODES = ("a", "w", "o")  # "o" (override) is TinyExp 0.0.1's spelling of "w"
WANDB_MODES = ("offline", "online", "disabled")

# Handlers added by the last tiny_logger_setup call, removed by the next one so that
# repeated setup (a retried run, a re-used Ray actor) never duplicates lines, while sinks
# added by others (Dagster, pytest) stay untouched.
_handler_ids: list[int] = []


def _check_level(level: str) -> str:
    try:
        logger.level(level)
    except (ValueError, TypeError) as exc:
        raise ConfigValueError("level", level, LOG_LEVELS) from exc
    return level


def _rank_level(level: str, rank: int) -> str:
    """Rank 0 logs at `level`; other ranks at WARNING or above, to avoid N copies of each line."""
    if rank == 0 or logger.level(level).no >= logger.level("WARNING").no:
        return level
    return "WARNING"


def _log_format(rank: int) -> str:
    return (
        "<green>{time:YYYY-MM-DD HH:mm:ss}</green> | <level>{level: <8}</level> | "
        f"rank{rank} | " + "{message}"
    )


def _log_file(save_dir: str, filename: str, rank: int) -> Path:
    if rank == 0:
        return Path(save_dir) / filename
    stem, suffix = os.path.splitext(filename)
    return Path(save_dir) / f"{stem}_rank{rank}{suffix}"


def _redact_record(record: Any) -> bool:
    """Hide URL credentials in every line: an experiment may log its raw config (0.0.1
    examples log `OmegaConf.structured(self)`), which holds the real URLs."""
    record["message"] = redact_text(record["message"])
    return True


def _remove_own_handlers() -> None:
    # loguru's default stderr handler (id 0) is removed too; it may already be gone.
    for handler_id in [0, *_handler_ids]:
        try:
            logger.remove(handler_id)
        except ValueError:
            pass
    _handler_ids.clear()


def tiny_logger_setup(
    save_dir: str | None = None,
    distributed_rank: int = 0,
    filename: str = "log.txt",
    mode: str = "a",
    *,
    extra_sink: Callable[[str], Any] | None = None,
    level: str = "INFO",
) -> Any:
    """Configure loguru for one rank (console, optional file, optional extra sink); idempotent.

    Rank 0 logs at `level` to stderr and `<save_dir>/<filename>`; other ranks log WARNING and
    above to stderr and `<save_dir>/<stem>_rank<r><suffix>`. `extra_sink` receives each
    formatted rank-0 line without its newline; it is ignored on other ranks. Left unset, it
    is the launcher's log forwarder (the Ray launcher streams rank-0 lines to its caller).
    """
    _check_level(level)
    if extra_sink is None:
        extra_sink = get_log_forwarder()
    if mode not in FILE_MODES:
        raise ConfigValueError("mode", mode, FILE_MODES)
    _remove_own_handlers()
    rank_level = _rank_level(level, distributed_rank)
    fmt = _log_format(distributed_rank)
    # diagnose=False: loguru would print the values of local variables (a URL with its
    # password among them) in logged tracebacks.
    common = {"format": fmt, "filter": _redact_record, "diagnose": False}
    _handler_ids.append(logger.add(sys.stderr, level=rank_level, **common))
    if save_dir:
        path = _log_file(save_dir, filename, distributed_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One file per rank, so no cross-process queue (enqueue) is needed.
        file_mode = "w" if mode == "o" else mode
        handler = logger.add(
            path, level=rank_level, mode=file_mode, encoding="utf-8", colorize=False, **common
        )
        _handler_ids.append(handler)
    if extra_sink is not None and distributed_rank == 0:
        handler = logger.add(
            lambda message: extra_sink(message.rstrip("\n")),
            level=rank_level,
            colorize=False,
            **common,
        )
        _handler_ids.append(handler)
    return logger


@dataclass
class LoggerCfg:
    """Logging of a run; build_logger() configures loguru for one rank."""

    level: str = "INFO"  # rank 0 level; other ranks log WARNING and above
    filename: str = "log.txt"

    def validate(self) -> None:
        _check_level(self.level)

    def build_logger(
        self,
        save_dir: str | None,
        distributed_rank: int = 0,
        filename: str | None = None,
        mode: str = "a",
        extra_sink: Callable[[str], Any] | None = None,
    ) -> Any:
        """Configure loguru for this rank and return `loguru.logger`."""
        name = filename or self.filename
        configured = tiny_logger_setup(
            save_dir, distributed_rank, name, mode, extra_sink=extra_sink, level=self.level
        )
        if save_dir:
            configured.info("log file: {}", _log_file(save_dir, name, distributed_rank))
        return configured


@dataclass
class WandbCfg:
    """Weights & Biases tracking; offline by default so no credentials are needed."""

    enable_wandb: bool = False
    project: str = "tinyexp"
    mode: Literal["offline", "online", "disabled"] = "offline"

    def build_wandb(self, accelerator: Any = None, **init_kwargs: Any) -> Any:
        """Start and return a wandb run on rank 0 when enabled, else None."""
        if not self.enable_wandb or getattr(accelerator, "rank", 0) != 0:
            return None
        import wandb

        kwargs: dict[str, Any] = {"project": self.project, **init_kwargs, "mode": self.mode}
        if kwargs.get("dir"):
            # wandb does not create `dir` and falls back to a temp dir, losing the run's files.
            Path(kwargs["dir"]).mkdir(parents=True, exist_ok=True)
        return wandb.init(**kwargs)

    def build_tracker(
        self,
        run_dir: str,
        *,
        config: dict[str, Any],
        name: str,
        is_main_process: bool = True,
        resume: dict[str, Any] | None = None,
    ) -> Any:
        """A W&B run under `<run_dir>/wandb` on the main process when enabled, else a no-op.

        The tracker's `log(row, step)` records a history row and `finish(summary)` the final
        metrics, returning `wandb_run_id` and `wandb_dir` for the run summary. `resume` is a
        checkpoint's tracker state (`tracker.resume_state()`): its W&B run is continued.
        """
        from tinyexp_core.training.tracking import NullTracker, start_wandb_run

        if not (self.enable_wandb and is_main_process) or self.mode == "disabled":
            return NullTracker()
        return start_wandb_run(
            project=self.project,
            mode=self.mode,
            run_dir=run_dir,
            name=name,
            config=config,
            run_id=str((resume or {}).get("wandb_run_id") or ""),
        )
