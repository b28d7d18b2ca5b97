"""The checkpoint format: one plain dict, written atomically with a sha256 sidecar, loaded verified.

A checkpoint is a dict (see `build_checkpoint`) saved with `torch.save` and loadable with
`torch.load(weights_only=True)`. Each file `<name>.pt` has a sidecar `<name>.pt.sha256`
written after the data, so a file only verifies once it is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import shutil
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from loguru import logger

from tinyexp_core.config.exceptions import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointWriteError,
    InvalidCheckpointTypeError,
    UnsupportedCheckpointFormatError,
)
from tinyexp_core.files import (
    CHUNK_BYTES,
    atomic_copy,
    atomic_write,
    atomic_write_bytes,
    sha256_file,
)
from tinyexp_core.lazy import lazy_module

# torch loads on first use: CheckpointCfg is part of every experiment's config, which
# Dagster imports when it loads definitions.
torch = lazy_module("torch")

CHECKPOINT_FORMAT = "tinyexp.checkpoint/1"
SIDECAR_SUFFIX = ".sha256"

_REQUIRED_KEYS = ("format", "model")


# ---------------------------------------------------------------- building and restoring


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module inside DDP / DataParallel / torch.compile wrappers."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            # torch.compile's wrapper prefixes every key with "_orig_mod."
            model = model._orig_mod
        else:
            return model


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (Sequence, AbstractSet)):
        return list(obj)
    return str(obj)


def _plain_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    # A JSON round trip leaves only dict/list/str/int/float/bool/None, which both
    # weights_only loading and Dagster metadata accept (OmegaConf nodes, Paths, tuples).
    return json.loads(json.dumps(dict(config or {}), default=_json_default))


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": list(cuda)}


def build_checkpoint(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    epoch: int,
    step: int,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    exp_class: str = "",
    extra: dict[str, Any] | None = None,
    position: dict[str, Any] | None = None,
    rng_ranks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the checkpoint dict; `epoch` is the last completed epoch (0-based).

    A step-level checkpoint (see `step_checkpoint`) also has `position` (its `epoch` is the
    epoch in progress, `step_in_epoch` of its batches done) and `rng_ranks` (every rank's RNG).
    """
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "rng": _rng_state(),
        "config": _plain_config(config),
        "metrics": {str(k): float(v) for k, v in (metrics or {}).items()},
        "exp_class": str(exp_class),
        "saved_at": datetime.now(timezone.utc).isoformat(),
        # TorchVersion is a str subclass that weights_only loading rejects.
        "torch_version": str(torch.__version__),
        "extra": dict(extra or {}),
    }
    if position is not None:
        state["position"] = dict(position)
        state["rng_ranks"] = list(rng_ranks or [])
    return state


def _first_shape_mismatch(expected: Mapping[str, Any], loaded: Mapping[str, Any]) -> str | None:
    missing = [k for k in expected if k not in loaded]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        shape = tuple(getattr(expected[missing[0]], "shape", ()))
        return f"missing tensor {missing[0]!r}, model shape {shape}{more}"
    unexpected = [k for k in loaded if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        shape = tuple(getattr(loaded[unexpected[0]], "shape", ()))
        return f"unexpected tensor {unexpected[0]!r}, checkpoint shape {shape}{more}"
    for key, want in expected.items():
        got = loaded[key]
        if isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor):
            if want.shape != got.shape:
                return (
                    f"tensor {key!r}: checkpoint shape {tuple(got.shape)}, "
                    f"model shape {tuple(want.shape)}"
                )
    return None


def _load_component(obj: Any, state: Mapping[str, Any], key: str, label: str) -> None:
    saved = state.get(key)
    if saved is None:
        raise CheckpointMismatchError(label, f"it holds no {key} state but a {key} was given")
    try:
        obj.load_state_dict(saved)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointMismatchError(label, f"{key} state does not fit: {exc}") from exc


def _restore_rng(state: Mapping[str, Any], label: str) -> None:
    rng = state.get("rng")
    if not isinstance(rng, Mapping) or rng.get("torch") is None:
        raise UnsupportedCheckpointFormatError(label, "restore_rng=True but it holds no rng state")
    # set_rng_state wants a CPU ByteTensor; map_location may have moved it.
    torch.set_rng_state(rng["torch"].cpu())
    cuda_states = list(rng.get("cuda") or [])
    num_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(cuda_states) != num_devices and cuda_states:
        logger.warning(
            "checkpoint {} holds CUDA RNG state for {} devices, this process sees {}; "
            "restoring the first {}",
            label,
            len(cuda_states),
            num_devices,
            min(len(cuda_states), num_devices),
        )
    for index in range(min(len(cuda_states), num_devices)):
        torch.cuda.set_rng_state(cuda_states[index].cpu(), index)


def restore(
    state: Mapping[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    path: str = "",
    restore_rng: bool = False,
) -> None:
    """Load a checkpoint dict into model (strict), optimizer, scheduler and optionally RNG."""
    label = str(path) or "<checkpoint dict>"
    if "model" not in state:
        raise UnsupportedCheckpointFormatError(label, "missing key 'model'")
    target = unwrap_model(model)
    # Checked up front: load_state_dict's own error lists every key and hides the first cause.
    mismatch = _first_shape_mismatch(target.state_dict(), state["model"])
    if mismatch is not None:
        raise CheckpointMismatchError(label, mismatch)
    target.load_state_dict(state["model"], strict=True)
    if optimizer is not None:
        _load_component(optimizer, state, "optimizer", label)
    if scheduler is not None:
        _load_component(scheduler, state, "scheduler", label)
    if restore_rng:
        _restore_rng(state, label)


# ---------------------------------------------------------------- atomic files


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _write_sidecar(path: Path, sha: str, size: int) -> None:
    meta = {"sha256": sha, "size": size, "saved_at": datetime.now(timezone.utc).isoformat()}
    payload = json.dumps(meta, indent=1).encode()
    atomic_write_bytes(_sidecar_path(path), payload)


def _check_state(state: Any, label: str) -> dict[str, Any]:
    if not isinstance(state, dict):
        raise InvalidCheckpointTypeError(label, type(state).__name__)
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if missing:
        raise UnsupportedCheckpointFormatError(label, f"missing keys {missing}")
    return state


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err` (itself, or in its cause/context chain: torch.save wraps a
    failed write in a RuntimeError about stream positions)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write of `path` into CheckpointWriteError naming the file and the OS
    error (disk full, read-only, file too large); other errors pass unchanged."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:
        cause = _os_error(err)
        if cause is None:
            raise
        raise CheckpointWriteError(str(path), cause) from err


def save_checkpoint(state: dict[str, Any], path: str | Path) -> str:
    """Atomically write a checkpoint and then its sha256 sidecar; return the sha256."""
    path = Path(path)
    _check_state(state, str(path))
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # Data first, sidecar second: a crash in between leaves a stale or missing sidecar,
        # which fails verification instead of vouching for the new bytes.
        sha, size = atomic_write(path, lambda f: torch.save(state, f))
        _write_sidecar(path, sha, size)
    return sha


def copy_checkpoint(
    src: str | Path, dst: str | Path, expected_sha: str, *, rehash: bool = True
) -> None:
    """Copy a checkpoint atomically and write its sidecar once the copy matches `expected_sha`.

    `rehash=False` copies in the kernel and writes the sidecar with `expected_sha` and the
    copy's size without reading the bytes back: for a copy of a file this process has just
    written and hashed (the training loop's epoch and best files, every epoch). The copy is
    still checked where it matters, when it is loaded (`verify_checkpoint`); on 2 busy cores
    the re-hash cost the other rank its share of a core (~10 ms per 14 MB copy here).
    """
    src, dst = Path(src), Path(dst)
    if not rehash:
        size = src.stat().st_size
        with _writing(dst):
            atomic_copy(src, dst, size)
            _write_sidecar(dst, expected_sha, size)
        return

    def copy(f: IO[bytes]) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f, CHUNK_BYTES)

    with _writing(dst):
        sha, size = atomic_write(dst, copy)
    if sha != expected_sha:
        # dst now has no matching sidecar, so it fails verification until rewritten.
        raise CheckpointCorruptError(
            str(dst), f"copy of {src} has sha256 {sha}, expected {expected_sha}"
        )
    with _writing(dst):
        _write_sidecar(dst, sha, size)


def _read_sidecar(path: Path) -> tuple[str, int]:
    sidecar = _sidecar_path(path)
    if not sidecar.is_file():
        raise CheckpointCorruptError(str(path), f"sha256 sidecar {sidecar.name} is missing")
    try:
        meta = json.loads(sidecar.read_text())
        return str(meta["sha256"]), int(meta["size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorruptError(
            str(path), f"sha256 sidecar {sidecar.name} is unreadable: {exc!r}"
        ) from exc


def verify_checkpoint(path: str | Path) -> str:
    """Check a checkpoint against its sidecar (size, then sha256); return the sha256."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(str(path))
    expected_sha, expected_size = _read_sidecar(path)
    size = path.stat().st_size
    if size != expected_size:
        raise CheckpointCorruptError(
            str(path), f"size: expected {expected_size} bytes, got {size} bytes"
        )
    sha = sha256_file(path)
    if sha != expected_sha:
        raise CheckpointCorruptError(str(path), f"sha256: expected {expected_sha}, got {sha}")
    return sha


def load_checkpoint(
    path: str | Path, *, map_location: Any = "cpu", verify: bool = True
) -> dict[str, Any]:
    """Verify (optionally) and load a checkpoint with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(str(path))
    if verify:
        verify_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as exc:
        # torch reports a damaged archive as RuntimeError and a disallowed global as
        # UnpicklingError; either way the file cannot be used as a checkpoint.
        raise CheckpointCorruptError(
            str(path), f"torch.load failed: {type(exc).__name__}: {exc}"
        ) from exc
    return _check_state(state, str(path))
