"""What every contract type shares: the metric direction, ContractError, JSON helpers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

from tinyexp_core.config.exceptions import TinyExpError

Direction = Literal["max", "min"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)


class ContractError(TinyExpError, ValueError):
    """A serialized result does not have the contract's shape (missing key, wrong type)."""

    def __init__(self, what: str, key: str, problem: str) -> None:
        self.what = what
        self.key = key
        self.problem = problem
        super().__init__(f"{what}: key {key!r} {problem}")


# ---------------------------------------------------------------- JSON helpers


def _num(value: float | None) -> float | None:
    """A float for JSON: NaN and inf (never computed, diverged) become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _float(value: Any) -> float:
    """The inverse of `_num`: None reads back as NaN."""
    return math.nan if value is None else float(value)


def _require(data: Mapping[str, Any], what: str, *keys: str) -> None:
    if not isinstance(data, Mapping):
        raise ContractError(what, "<root>", f"must be a mapping, got {type(data).__name__}")
    for key in keys:
        if key not in data:
            raise ContractError(what, key, f"is missing (present: {sorted(data)})")


def _metrics_out(metrics: Mapping[str, float]) -> dict[str, float | None]:
    return {str(k): _num(v) for k, v in metrics.items()}


def _metrics_in(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    return {str(k): _float(v) for k, v in (metrics or {}).items()}
