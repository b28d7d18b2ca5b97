"""The sweep's Dagster side moved to `tinyexp_dagster.sweep` (with the core side in
`tinyexp_core.sweep`); this keeps the old import path, with the package's own names."""

from tinyexp_dagster import sweep as _sweep
from tinyexp_dagster.sweep import *  # noqa: F403 (the old path re-exports the package)

__all__ = list(_sweep.__all__)
