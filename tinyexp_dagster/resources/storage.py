"""Where datasets, runs and promoted models live."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

ENV_STORAGE_ROOT = "TINYEXP_STORAGE_ROOT"
DEFAULT_STORAGE_DIR = ".tinyexp"


def default_storage_root() -> str:
    """`$TINYEXP_STORAGE_ROOT`, else `.tinyexp/` under the working directory."""
    return os.environ.get(ENV_STORAGE_ROOT) or str(Path.cwd() / DEFAULT_STORAGE_DIR)


class StorageResource(dg.ConfigurableResource):
    """The storage root: a local folder by default, a shared filesystem for clusters."""

    root: str = Field(
        default="",
        description="folder of datasets, runs and models; empty: $TINYEXP_STORAGE_ROOT, "
        "else ./.tinyexp",
    )

    def resolved_root(self) -> Path:
        root = Path(self.root or default_storage_root()).expanduser().resolve()
        # Owner-only when we create it: runs, models and the Redis password live here.
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return root

    def datasets_dir(self) -> Path:
        return self.resolved_root() / "datasets"

    def runs_dir(self) -> Path:
        return self.resolved_root() / "runs"

    def models_dir(self) -> Path:
        return self.resolved_root() / "models"
