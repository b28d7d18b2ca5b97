"""The experiment contract: what `prepare_data`, `train` and `evaluate` return.

Plain dataclasses with `to_dict()` / `from_dict()`, so a result crosses a Ray worker,
a Dagster asset value (JSON) and a checkpoint without losing its shape. Non-finite
floats (NaN, inf: a metric that was never computed) become `None` in `to_dict()`, since
strict JSON has no NaN, and come back as NaN from `from_dict()`.

The experiment names one `PrimaryMetric` (`accuracy`/max, `rmse`/min); checks, sensors,
champion gates and metadata compare models with it, never with a hard-coded name.
No torch import: the Dagster layer reads these types too.

`base` holds what they share (ContractError, JSON helpers), `metric` the PrimaryMetric and
its names, `results` the values the experiment methods return.
"""

from tinyexp_core.contract.base import DIRECTIONS, ContractError, Direction
from tinyexp_core.contract.metric import (
    KNOWN_METRIC_BOUNDS,
    VAL_PREFIX,
    PrimaryMetric,
    best_val_key,
    val_key,
)
from tinyexp_core.contract.results import (
    Checkpoints,
    EpochRecord,
    EvalResult,
    PreparedData,
    TrainResult,
)

__all__ = [
    "DIRECTIONS",
    "KNOWN_METRIC_BOUNDS",
    "VAL_PREFIX",
    "Checkpoints",
    "ContractError",
    "Direction",
    "EpochRecord",
    "EvalResult",
    "PreparedData",
    "PrimaryMetric",
    "TrainResult",
    "best_val_key",
    "val_key",
]
