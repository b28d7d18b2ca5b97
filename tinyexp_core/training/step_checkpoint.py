"""Step-level checkpoints: where in the epoch a run is, every rank's RNG, background writes.

A step checkpoint is the ordinary checkpoint dict (`checkpoint.build_checkpoint`) with two
more keys, so a resumed run continues mid-epoch and ends with the same weights:

- `position`: `{"epoch", "step_in_epoch", "num_steps", "world_size", "sampler_seed",
  "loss_sum", "seen", "ranks"}`: the epoch in progress, how many of its batches are done,
  and the epoch's running loss sum and sample count, rank 0's and (`ranks`) every rank's,
  so the interrupted epoch's history row matches too.
- `rng_ranks`: one dict per rank (`torch`, `cuda`, `numpy`, `python`), rank order.

`StepCheckpointWriter` snapshots the state on the step (tensors copied to CPU) and writes
it in a background thread, one write in flight: a new request waits for the previous
write to finish (no checkpoint is skipped, so `every_n_steps` yields exactly its files).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyexp_core.config.exceptions import CheckpointMismatchError, UnsupportedCheckpointFormatError
from tinyexp_core.lazy import lazy_module

torch = lazy_module("torch")  # loaded on first use: experiment modules import this one

__all__ = [
    "DataPosition",
    "StepCheckpointWriter",
    "gather_objects",
    "gather_rng_states",
    "resume_position",
    "rng_state",
    "snapshot",
]


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch, CUDA, numpy, python) in weights_only-loadable types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        # ndarrays are not weights_only-loadable: the MT19937 key goes as an int64 tensor.
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set this process's RNGs from one `rng_state()` dict."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = list(state.get("cuda") or [])
    for index in range(min(len(cuda), torch.cuda.device_count())):
        torch.cuda.set_rng_state(cuda[index].cpu(), index)
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def gather_objects(accelerator: Any, local: Any) -> list[Any]:
    """Every rank's `local` (picklable), rank order (a collective: call it on every rank)."""
    if getattr(accelerator, "world_size", 1) <= 1:
        return [local]
    import torch.distributed as dist

    states: list[Any] = [None] * accelerator.world_size
    dist.all_gather_object(states, local)
    return states


def gather_rng_states(accelerator: Any) -> list[dict[str, Any]]:
    """Every rank's `rng_state()`, rank order (a collective: call it on every rank)."""
    return gather_objects(accelerator, rng_state())


def snapshot(obj: Any) -> Any:
    """A copy of a state structure whose tensors are detached CPU clones (safe to write later)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [snapshot(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(snapshot(v) for v in obj)
    return obj


@dataclass
class DataPosition:
    """Where a run is in its data: epoch in progress and batches of it done (+ its loss sums)."""

    epoch: int = 0
    step_in_epoch: int = 0
    loss_sum: float = 0.0
    seen: int = 0

    def to_dict(
        self,
        *,
        num_steps: int,
        world_size: int,
        sampler_seed: int,
        ranks: list[DataPosition] | None = None,
    ) -> dict[str, Any]:
        """The checkpoint's `position` entry; `ranks`: every rank's position (rank order),
        whose loss sums differ (each rank sums its own batches)."""
        out = {
            "epoch": int(self.epoch),
            "step_in_epoch": int(self.step_in_epoch),
            "num_steps": int(num_steps),
            "world_size": int(world_size),
            "sampler_seed": int(sampler_seed),
            "loss_sum": float(self.loss_sum),
            "seen": int(self.seen),
        }
        if ranks is not None:
            out["ranks"] = [{"loss_sum": float(r.loss_sum), "seen": int(r.seen)} for r in ranks]
        return out


def resume_position(
    state: Mapping[str, Any], *, rank: int, world_size: int, num_steps: int, path: str = ""
) -> DataPosition:
    """Where to continue from `state`; restores this rank's RNG when it is mid-epoch.

    An epoch checkpoint (no `position`) continues at the start of the next epoch. A step
    checkpoint continues inside its epoch, which needs the same world size and epoch length
    (otherwise the data order differs: a typed error says so).
    """
    label = path or "<checkpoint dict>"
    position = state.get("position")
    if position is None:
        return DataPosition(epoch=int(state["epoch"]) + 1)
    for key, now in (("world_size", world_size), ("num_steps", num_steps)):
        if int(position[key]) != now:
            raise CheckpointMismatchError(
                label, f"it stopped mid-epoch with {key}={position[key]}, this run has {now}"
            )
    ranks = state.get("rng_ranks") or []
    if len(ranks) != world_size:
        raise UnsupportedCheckpointFormatError(
            label, f"rng_ranks holds {len(ranks)} ranks' states, expected {world_size}"
        )
    restore_rng(ranks[rank])
    # This rank's own loss sums; a checkpoint without `ranks` holds rank 0's only.
    sums = (position.get("ranks") or [position] * world_size)[rank]
    return DataPosition(
        epoch=int(position["epoch"]),
        step_in_epoch=int(position["step_in_epoch"]),
        loss_sum=float(sums["loss_sum"]),
        seen=int(sums["seen"]),
    )


class StepCheckpointWriter:
    """Background writer of checkpoints through a CheckpointManager, one in flight.

    `submit` snapshots the state at once and returns; the file is written in a thread (a
    step checkpoint by default, or what `save(state)` writes: an epoch's files). A `submit`
    while a write is in flight waits for it first, so files land in submission order.
    `save_now` (the stop checkpoint) waits for any write in flight, then writes in the
    caller's thread. A failed background write raises at the next `submit`, `save_now` or
    `wait`.
    """

    def __init__(
        self, manager: Any, on_saved: Callable[[str, dict[str, Any]], None] | None = None
    ) -> None:
        self.manager = manager
        self._on_saved = on_saved
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(
        self, state: dict[str, Any], save: Callable[[dict[str, Any]], Any] | None = None
    ) -> None:
        """Snapshot `state` now; write it in the background: `save(state)` when given
        (it reports its own files), else a step checkpoint (reported to `on_saved`)."""
        state = snapshot(state)
        self.wait()
        # Not a daemon: an interpreter exiting mid-write lets it finish first.
        self._thread = threading.Thread(
            target=self._write, args=(state, save or self._save_step), name="tinyexp-checkpoint"
        )
        self._thread.start()

    def save_now(self, state: dict[str, Any]) -> str:
        """Write `state` now (after any write in flight); returns its path."""
        self.wait()
        return self._save_step(state)

    def _save_step(self, state: dict[str, Any]) -> str:
        path = self.manager.save_step(state)
        if self._on_saved is not None:
            self._on_saved(path, state)
        return path

    def check(self) -> None:
        """Raise the error of a background write that has already failed (no waiting):
        the training step after the failure reports it, not the next checkpoint."""
        if self._error is not None and (self._thread is None or not self._thread.is_alive()):
            self.wait()

    def wait(self) -> None:
        """Wait for the write in flight; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self, state: dict[str, Any], save: Callable[[dict[str, Any]], Any]) -> None:
        try:
            save(state)
        except BaseException as err:  # handed to the training thread at its next wait
            self._error = err

    def __enter__(self) -> StepCheckpointWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.wait()
            return
        # Already failing: let the write finish (never a half-written file), keep the cause.
        if self._thread is not None:
            self._thread.join()
