"""Checkpoints: one plain dict, written atomically with a sha256 sidecar, loaded verified.

A checkpoint is a dict (see `build_checkpoint`) saved with `torch.save` and loadable with
`torch.load(weights_only=True)`. Each file `<name>.pt` has a sidecar `<name>.pt.sha256`
written after the data, so a file only verifies once it is complete. `format` holds the
dict and its files; `manager` the retention of a run's files (`CheckpointManager`) and an
experiment's checkpoint description (`CheckpointCfg`).
"""

from tinyexp_core.checkpoint.format import (
    CHECKPOINT_FORMAT,
    SIDECAR_SUFFIX,
    build_checkpoint,
    copy_checkpoint,
    load_checkpoint,
    restore,
    save_checkpoint,
    sha256_file,
    unwrap_model,
    verify_checkpoint,
)
from tinyexp_core.checkpoint.manager import CheckpointCfg, CheckpointManager

__all__ = [
    "CHECKPOINT_FORMAT",
    "SIDECAR_SUFFIX",
    "CheckpointCfg",
    "CheckpointManager",
    "build_checkpoint",
    "copy_checkpoint",
    "load_checkpoint",
    "restore",
    "save_checkpoint",
    "sha256_file",
    "unwrap_model",
    "verify_checkpoint",
]
