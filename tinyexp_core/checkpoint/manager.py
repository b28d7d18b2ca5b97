"""Retention: CheckpointManager (epoch, step, last and best files in one directory, pruned,
uploaded for a remote root) and CheckpointCfg, the checkpoint description of an experiment."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from tinyexp_core import storage
from tinyexp_core.checkpoint.format import (
    _sidecar_path,
    copy_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from tinyexp_core.config.exceptions import (
    CheckpointCorruptError,
    CheckpointError,
    ConfigValueError,
    UnsupportedCheckpointFormatError,
)

_EPOCH_FILE_RE = re.compile(r"epoch_(\d+)\.pt")
_STEP_FILE_RE = re.compile(r"step_(\d+)\.pt")

# ---------------------------------------------------------------- retention


def _validate_retention(keep_last_n: int, last_ckpt_name: str, best_ckpt_name: str) -> None:
    if isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int) or keep_last_n < 1:
        raise ConfigValueError("keep_last_n", keep_last_n, "an integer >= 1")
    allowed = (
        "a file name without '/' that differs from the other and is not epoch_<N>.pt or step_<N>.pt"
    )
    for key, name in (("last_ckpt_name", last_ckpt_name), ("best_ckpt_name", best_ckpt_name)):
        # An epoch-like name would be pruned by retention; a path would escape the directory.
        bad = _EPOCH_FILE_RE.fullmatch(name) or _STEP_FILE_RE.fullmatch(name)
        if not name or "/" in name or os.sep in name or bad:
            raise ConfigValueError(key, name, allowed)
    if last_ckpt_name == best_ckpt_name:
        raise ConfigValueError("best_ckpt_name", best_ckpt_name, allowed)


class CheckpointManager:
    """Writes epoch_<NNNN>.pt, step_<NNNNNNNNN>.pt, last.pt and best.pt in one directory.

    last.pt is the newest checkpoint of either kind; the newest `keep_last_n` epoch files
    and the newest `keep_last_n` step files are kept. Saves are serialized by a lock, so a
    background step write and an epoch write never interleave on last.pt.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep_last_n: int = 2,
        last_ckpt_name: str = "last.pt",
        best_ckpt_name: str = "best.pt",
    ) -> None:
        _validate_retention(keep_last_n, last_ckpt_name, best_ckpt_name)
        self.directory = Path(directory)
        self.keep_last_n = keep_last_n
        self._last = self.directory / last_ckpt_name
        self._best = self.directory / best_ckpt_name
        self._lock = threading.Lock()
        self._written = False  # the directory existed at a save: its vanishing is news
        # In a node's mirror of an object-store root, saved files are uploaded in the
        # background (`tinyexp_core.storage`); a local root uploads nothing.
        uri = storage.to_uri(self.directory)
        self.remote = uri if storage.is_remote(uri) else ""

    @property
    def last_path(self) -> str:
        """Path of the checkpoint of the most recent epoch."""
        return str(self._last)

    @property
    def best_path(self) -> str:
        """Path of the checkpoint with the best validation metric."""
        return str(self._best)

    def _epoch_files(self, pattern: re.Pattern[str] = _EPOCH_FILE_RE) -> list[Path]:
        """Epoch files (or files matching `pattern`), oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = pattern.fullmatch(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def save(self, state: dict[str, Any], *, is_best: bool) -> dict[str, str]:
        """Write the epoch file, last.pt and (if is_best) best.pt, then prune old epochs."""
        epoch = state.get("epoch") if isinstance(state, dict) else None
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise UnsupportedCheckpointFormatError(
                str(self.directory), f"state['epoch'] must be an int >= 0, got {epoch!r}"
            )
        epoch_path = self.directory / f"epoch_{epoch:04d}.pt"
        with self._lock:
            self._check_directory()
            # last.pt first: latest_valid() tries it first, so it must never lag the others.
            sha = save_checkpoint(state, self._last)
            copy_checkpoint(self._last, epoch_path, sha, rehash=False)
            written = {"epoch": str(epoch_path), "last": str(self._last)}
            if is_best:
                copy_checkpoint(self._last, self._best, sha, rehash=False)
                written["best"] = str(self._best)
            self._upload(epoch_path, *([self._best] if is_best else []), self._last)
            self._prune(_EPOCH_FILE_RE)
            self._written = True
        return written

    def save_step(self, state: dict[str, Any]) -> str:
        """Write a step-level checkpoint as step_<global step>.pt and last.pt; return its path."""
        step = state.get("step") if isinstance(state, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise UnsupportedCheckpointFormatError(
                str(self.directory), f"state['step'] must be an int >= 0, got {step!r}"
            )
        step_path = self.directory / f"step_{step:09d}.pt"
        with self._lock:
            self._check_directory()
            sha = save_checkpoint(state, self._last)
            copy_checkpoint(self._last, step_path, sha, rehash=False)
            self._upload(step_path, self._last)
            self._prune(_STEP_FILE_RE)
            self._written = True
        return str(step_path)

    def _check_directory(self) -> None:
        """Warn when the directory this manager wrote to has vanished: the write recreates
        it, but the checkpoints it held are gone."""
        if self._written and not self.directory.is_dir():
            logger.warning(
                f"checkpoint directory {self.directory} vanished; writing it anew "
                "(the checkpoints it held are gone)"
            )

    def _upload(self, *paths: Path) -> None:
        """Hand the files just written to the background uploader (remote roots only), in
        order: last.pt goes last, so the bucket's last.pt is never newer than its peers.
        Raises an earlier upload's failure for good (`UploadFailedError`)."""
        if not self.remote:
            return
        uploader = storage.uploader_for(self.directory)
        for path in paths:
            uploader.submit(path, f"{self.remote}/{path.name}", snapshot=True)

    def flush_uploads(self, timeout_s: float | None = None) -> None:
        """Wait for this run's checkpoint uploads (no-op on a local root); raises
        `UploadFailedError` (naming the file kept on local disk) if one failed for good."""
        if self.remote:
            storage.uploader_for(self.directory).flush(timeout_s)

    def _prune(self, pattern: re.Pattern[str]) -> None:
        for path in self._epoch_files(pattern)[: -self.keep_last_n]:
            # Data before sidecar: an orphan sidecar is harmless, an orphan file warns.
            path.unlink(missing_ok=True)
            _sidecar_path(path).unlink(missing_ok=True)

    def latest_valid(self, *, map_location: Any = "cpu") -> tuple[str, dict[str, Any]] | None:
        """(path, state) of last.pt, else of the newest valid epoch/step file; None if none."""
        if self.remote:  # a resume on any node: what the bucket holds, verified
            storage.fetch_mirror(self.directory)
        kept = self._epoch_files() + self._epoch_files(_STEP_FILE_RE)
        # Newest first by write time: an epoch file and a step file share no numbering.
        kept.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
        candidates = [self._last, *kept]
        if not any(path.is_file() for path in candidates):
            return None
        failures = []
        for index, path in enumerate(candidates):
            try:
                state = load_checkpoint(path, map_location=map_location)
                if path == self._last:
                    return self._newest(path, state, kept, map_location)
                return str(path), state
            except CheckpointError as exc:
                reason = getattr(exc, "reason", str(exc))
                failures.append(f"{path.name} ({reason})")
                fallback = candidates[index + 1] if index + 1 < len(candidates) else None
                logger.warning(
                    "checkpoint {} is unusable ({}); falling back to {}",
                    path,
                    reason,
                    fallback if fallback is not None else "nothing (no candidates left)",
                )
        raise CheckpointCorruptError(
            str(self.directory), "no valid checkpoint among: " + "; ".join(failures)
        )

    def _newest(
        self, last: Path, state: dict[str, Any], kept: list[Path], map_location: Any
    ) -> tuple[str, dict[str, Any]]:
        """last.pt's (path, state), unless a valid epoch or step file beside it is further
        along: in a bucket last.pt is uploaded after its peers, so a node that resumes
        between the two uploads (the uploading rank was killed) finds last.pt one checkpoint
        behind the step file. Step files are named by global step; an epoch file ends its
        epoch (after last.pt's epoch, or that epoch itself when last.pt is mid-epoch)."""
        step, epoch = int(state.get("step", -1)), int(state.get("epoch", -1))
        newer = []
        for path in kept:
            if (match := _STEP_FILE_RE.fullmatch(path.name)) is not None:
                ahead = int(match.group(1)) > step
            else:
                n = int(_EPOCH_FILE_RE.fullmatch(path.name).group(1))
                ahead = n > epoch or (n == epoch and "position" in state)
            if ahead:
                newer.append(path)
        best = (str(last), state)
        for path in newer:
            try:
                other = load_checkpoint(path, map_location=map_location)
            except CheckpointError as exc:
                logger.warning("checkpoint {} is unusable ({}); ignored", path, exc)
                continue
            if int(other.get("step", -1)) > int(best[1].get("step", -1)):
                best = (str(path), other)
        if best[0] != str(last):
            logger.warning("{} is behind {}: resuming from the latter", last, best[0])
        return best

    def best_valid(self, *, map_location: Any = "cpu") -> tuple[str, dict[str, Any]] | None:
        """Return (path, state) of best.pt, None if absent; raises if it is corrupt."""
        if self.remote:
            storage.fetch_mirror(self.directory)
        if not self._best.is_file():
            return None
        return str(self._best), load_checkpoint(self._best, map_location=map_location)


@dataclass
class CheckpointCfg:
    """How a run keeps checkpoints; build_manager() makes its CheckpointManager."""

    keep_last_n: int = 2  # epoch files kept, and step files kept, newest first (last/best extra)
    last_ckpt_name: str = "last.pt"
    best_ckpt_name: str = "best.pt"
    every_n_steps: int = 0  # a background step checkpoint every N global steps; 0 = off
    every_s: float = 0.0  # a background step checkpoint after this many seconds; 0 = off
    # How often (seconds) several ranks agree on a stop request or an every_s save; 0 = after
    # every step. A stop takes up to about twice this plus two steps (tinyexp_core.training.stop).
    agree_every_s: float = 0.2

    def validate(self) -> None:
        """Checked after overrides (and again by the manager it builds)."""
        _validate_retention(self.keep_last_n, self.last_ckpt_name, self.best_ckpt_name)
        n = self.every_n_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigValueError("every_n_steps", n, "an integer >= 0 (0 = off)")
        if not (isinstance(self.every_s, (int, float)) and 0 <= self.every_s < float("inf")):
            raise ConfigValueError("every_s", self.every_s, "seconds >= 0, finite (0 = off)")
        # At most 5 s: a stop (twice this) must end before a launcher's 15 s grace is up.
        agree = self.agree_every_s
        if isinstance(agree, bool) or not isinstance(agree, (int, float)) or not 0 <= agree <= 5:
            raise ConfigValueError("agree_every_s", agree, "seconds in [0, 5] (0 = every step)")

    def build_manager(self, run_dir: str | Path) -> CheckpointManager:
        """Return a CheckpointManager for `<run_dir>/checkpoints`."""
        return CheckpointManager(
            Path(run_dir) / "checkpoints",
            keep_last_n=self.keep_last_n,
            last_ckpt_name=self.last_ckpt_name,
            best_ckpt_name=self.best_ckpt_name,
        )
