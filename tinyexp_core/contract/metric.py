"""PrimaryMetric: the one number that ranks models, and the names it goes by (`val_<name>`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.contract.base import DIRECTIONS, Direction, _require

# ---------------------------------------------------------------- primary metric


VAL_PREFIX = "val_"  # a validation metric's name in rows, events and metadata


def val_key(metric: str) -> str:
    """`val_<metric>`: a validation metric's name in history rows, events and metadata."""
    return f"{VAL_PREFIX}{metric}"


def best_val_key(metric: str) -> str:
    """`best_val_<metric>`: the best validation value of a run, in its summaries."""
    return f"best_{VAL_PREFIX}{metric}"


# The values a well-known metric can take: a threshold outside them can never be met.
KNOWN_METRIC_BOUNDS: dict[str, tuple[float, float]] = {
    **dict.fromkeys(("accuracy", "precision", "recall", "f1", "auc", "r2_clipped"), (0.0, 1.0)),
    **dict.fromkeys(("rmse", "mae", "mse", "loss", "error_rate"), (0.0, math.inf)),
}


@dataclass(frozen=True)
class PrimaryMetric:
    """The one number that ranks models: its name and whether higher or lower is better."""

    name: str  # a key of EvalResult.metrics and EpochRecord.metrics, e.g. `accuracy`
    direction: Direction = "max"

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigValueError("primary_metric.name", self.name, "a non-empty metric name")
        if self.direction not in DIRECTIONS:
            raise ConfigValueError("primary_metric.direction", self.direction, DIRECTIONS)

    @property
    def val_key(self) -> str:
        """Its name in history rows, progress events and metadata: `val_<name>`."""
        return val_key(self.name)

    @property
    def best_val_key(self) -> str:
        """The best validation value's name in run summaries: `best_val_<name>`."""
        return best_val_key(self.name)

    def check_threshold(self, key: str, value: float) -> None:
        """Refuse a threshold this metric can never meet (an rmse below 0, an accuracy
        above 1): ConfigValueError naming `key`, the value and the metric's range."""
        low, high = KNOWN_METRIC_BOUNDS.get(self.name, (-math.inf, math.inf))
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ConfigValueError(key, value, f"a finite number, in {self.name}'s units")
        if not low <= value <= high:
            allowed = f"a value of {self.name} ({self.direction}) in [{low:g}, {high:g}]"
            raise ConfigValueError(key, value, allowed)

    def better(self, a: float, b: float) -> bool:
        """Whether `a` is strictly better than `b`; NaN is never better, anything beats NaN."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a > b if self.direction == "max" else a < b

    def best(self, values: Iterable[float]) -> float:
        """The best of `values` (NaN when there is none that is a number)."""
        result = math.nan
        for value in values:
            if self.better(value, result):
                result = value
        return result

    def is_at_least_as_good(
        self, new: float, champion: float | None, tolerance: float = 0.0
    ) -> bool:
        """Whether `new` may replace `champion`: no worse than it by more than `tolerance`.

        No champion (None or NaN) accepts any number; a NaN `new` is never accepted.
        """
        if tolerance < 0:
            raise ConfigValueError("tolerance", tolerance, "a number >= 0")
        if math.isnan(new):
            return False
        if champion is None or math.isnan(champion):
            return True
        if self.direction == "max":
            return new >= champion - tolerance
        return new <= champion + tolerance

    def passes(self, value: float, threshold: float) -> bool:
        """Whether `value` meets a threshold (>= for max, <= for min); NaN never does."""
        if math.isnan(value):
            return False
        return value >= threshold if self.direction == "max" else value <= threshold

    def to_dict(self) -> dict[str, Any]:
        """`{"name": ..., "direction": ...}`."""
        return {"name": self.name, "direction": self.direction}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrimaryMetric:
        """Inverse of `to_dict()`."""
        _require(data, "PrimaryMetric", "name", "direction")
        return cls(str(data["name"]), data["direction"])
