"""Dagster's beta and preview warnings for the features this package uses on purpose.

Each is silenced exactly where this package makes the call, by its message, so a user's
own use of the same feature still warns:

- `Output(..., data_version=...)` (beta): the dataset, training and checkpoint assets record
  their data versions, which staleness and the retraining sensors read. The warning is
  attributed to the calling module, so one filter covers the calls of this package only.
  It is installed when `tinyexp_dagster` is imported (a code location's module imports it
  at its top level): Dagster builds components with its warnings suppressed inside
  `warnings.catch_warnings()`, which would drop a filter added while they are built.
- `@dg.asset_check(partitions_def=...)` (preview): a sweep's checks have one partition per
  trial. Dagster attributes this warning to its own decorator, so it is silenced around the
  calls (`partitioned_checks()`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

__all__ = ["partitioned_checks", "quiet_output_data_version"]

_OUTPUT_DATA_VERSION = r"Parameter `data_version` of initializer `Output\.__init__` is currently"
_PARTITIONED_CHECKS = r"Specifying a partitions_def on an AssetCheckSpec is currently in preview"


def quiet_output_data_version() -> None:
    """Silence the `Output(data_version=...)` beta warning for calls made by this package."""
    # By message and calling module (Dagster's BetaWarning class is not imported here: the
    # package's import stays free of dagster for the CLI).
    warnings.filterwarnings("ignore", message=_OUTPUT_DATA_VERSION, module=r"tinyexp_dagster\.")


@contextlib.contextmanager
def partitioned_checks() -> Iterator[None]:
    """Inside: asset checks with a `partitions_def` are built without the preview warning."""
    import dagster as dg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PARTITIONED_CHECKS, category=dg.PreviewWarning)
        yield
