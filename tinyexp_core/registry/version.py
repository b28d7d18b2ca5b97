"""ModelVersion: one registered version's record, as `models/<name>/<version>/version.json`
holds it (and as the `model_checkpoint` asset's value carries part of it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from tinyexp_core.contract import PrimaryMetric
from tinyexp_core.contract.base import ContractError

__all__ = ["ModelVersion"]

_REQUIRED = ("name", "version", "path", "sha256", "primary_metric")
_TEXT = ("pipeline", "data_version", "config_hash", "experiment", "source_run", "created")
_TEXT += ("created_by",)


@dataclass(frozen=True)
class ModelVersion:
    """A registered version: its file, what it scored at training and where it came from.

    `extra` keeps the keys of a record this release does not know (written by a later one),
    so `to_dict()` gives back what was read."""

    name: str  # the model's registry name
    version: str  # the version's name: the training run's id
    path: str  # its model.pt (a local path, or a URI under an object-store root)
    sha256: str  # of the file's bytes
    primary_metric: PrimaryMetric
    val_value: float | None = None  # the best validation value at training (None: not a number)
    pipeline: str = ""  # the pipeline that registered it ("" in a record without one)
    data_version: str = ""  # the prepared dataset's version it trained on
    config_hash: str = ""
    experiment: str = ""  # the experiment's import path, to rebuild it
    overrides: tuple[str, ...] = ()  # the run's `key=value` overrides
    dataset_path: str | None = None  # the prepared dataset directory it trained on
    source_run: str = ""  # the training run's id
    created: str = ""  # ISO 8601, UTC
    created_by: str = ""  # which run (or person) registered it
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `version.json` (extra keys included)."""
        data: dict[str, Any] = {**self.extra}
        for f in fields(self):
            if f.name != "extra":
                data[f.name] = getattr(self, f.name)
        data["primary_metric"] = self.primary_metric.to_dict()
        data["overrides"] = list(self.overrides)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelVersion:
        """Inverse of `to_dict()`. Records written by earlier releases load: optional keys
        may be missing (defaults), unknown ones are kept in `extra`; a missing name,
        version, path, sha256 or primary metric is a ContractError."""
        if not isinstance(data, Mapping):
            raise ContractError("ModelVersion", "<root>", f"must be a mapping, not {data!r}")
        for key in _REQUIRED:
            if data.get(key) in (None, ""):
                raise ContractError("ModelVersion", key, f"is missing (present: {sorted(data)})")
        known = {f.name for f in fields(cls)} - {"extra"}
        path = data.get("dataset_path")
        return cls(
            **{key: str(data[key]) for key in _REQUIRED[:-1]},
            primary_metric=PrimaryMetric.from_dict(data["primary_metric"]),
            val_value=_number(data.get("val_value")),
            **{key: str(data.get(key) or "") for key in _TEXT},
            overrides=tuple(str(o) for o in data.get("overrides") or ()),
            dataset_path=None if path is None else str(path),
            extra={k: v for k, v in data.items() if k not in known},
        )


def _number(value: Any) -> float | None:
    """A recorded metric value: None for a missing or non-numeric one (NaN stays NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
