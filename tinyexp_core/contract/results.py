"""What `prepare_data`, `train` and `evaluate` return: PreparedData, EpochRecord,
Checkpoints, TrainResult, EvalResult (JSON-safe with `to_dict` / `from_dict`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinyexp_core.contract.base import (
    ContractError,
    _float,
    _metrics_in,
    _metrics_out,
    _num,
    _require,
)
from tinyexp_core.contract.metric import VAL_PREFIX, PrimaryMetric, val_key

# ---------------------------------------------------------------- data


@dataclass
class PreparedData:
    """A prepared, versioned dataset on disk: what `prepare_data(storage_root)` returns."""

    path: str  # the version's directory, holding the split files and manifest.json
    data_version: str  # content hash: the same input always gives the same version
    source: str  # where the samples came from (`digits`, `mnist`, `diabetes`, ...)
    counts: dict[str, int]  # samples per split
    files: dict[str, dict[str, Any]]  # file name -> {"sha256": hex, "size": bytes}
    num_classes: int = 0  # 0 for regression
    class_histogram: dict[str, list[int]] = field(default_factory=dict)  # classification only
    shape: list[int] = field(default_factory=list)  # one sample's shape
    params: dict[str, Any] = field(default_factory=dict)  # what determined the version
    created_at: str = ""  # ISO 8601, UTC

    @property
    def manifest_path(self) -> str:
        """`<path>/manifest.json`."""
        return f"{self.path.rstrip('/')}/manifest.json"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; `from_dict` reads it back."""
        return {
            "path": self.path,
            "data_version": self.data_version,
            "source": self.source,
            "counts": {k: int(v) for k, v in self.counts.items()},
            "files": {k: dict(v) for k, v in self.files.items()},
            "num_classes": int(self.num_classes),
            "class_histogram": {k: list(v) for k, v in self.class_histogram.items()},
            "shape": list(self.shape),
            "params": dict(self.params),
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreparedData:
        """Inverse of `to_dict()`; also reads a `tinyexp.prepared/1` manifest dict."""
        _require(data, "PreparedData", "path", "data_version", "source", "counts", "files")
        return cls(
            path=str(data["path"]),
            data_version=str(data["data_version"]),
            source=str(data["source"]),
            counts={str(k): int(v) for k, v in data["counts"].items()},
            files={str(k): dict(v) for k, v in data["files"].items()},
            num_classes=int(data.get("num_classes", 0)),
            class_histogram={
                str(k): [int(n) for n in v] for k, v in (data.get("class_histogram") or {}).items()
            },
            shape=[int(n) for n in data.get("shape") or []],
            params=dict(data.get("params") or {}),
            created_at=str(data.get("created_at", "")),
        )


# ---------------------------------------------------------------- training


@dataclass
class EpochRecord:
    """One row of a run's history: losses, validation metrics, lr and speed of one epoch."""

    epoch: int  # 0-based
    train_loss: float
    val_loss: float
    metrics: dict[str, float] = field(default_factory=dict)  # validation metrics by name
    lr: float = math.nan  # at the end of the epoch
    samples_per_s: float = math.nan  # all ranks together; NaN for an epoch not trained now
    step: int = 0  # optimizer steps so far
    epoch_time_s: float = math.nan

    def metric(self, name: str) -> float:
        """A validation metric by name; KeyError names the ones present."""
        try:
            return self.metrics[name]
        except KeyError:
            raise KeyError(
                f"epoch {self.epoch} has no metric {name!r} ({sorted(self.metrics)})"
            ) from None

    def to_row(self) -> dict[str, Any]:
        """A flat row for a table: `val_<metric>` columns beside the losses."""
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
        }
        row.update({val_key(k): v for k, v in self.metrics.items()})
        row.update(
            {"lr": self.lr, "samples_per_s": self.samples_per_s, "epoch_time_s": self.epoch_time_s}
        )
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EpochRecord:
        """Read a flat row (`to_row()`, or TinyExp's older `{"val_accuracy": ...}` rows)."""
        _require(row, "EpochRecord", "epoch", "train_loss", "val_loss")
        fixed = {"epoch", "step", "train_loss", "val_loss", "lr", "samples_per_s", "epoch_time_s"}
        metrics = {
            k[len(VAL_PREFIX) :]: _float(v)
            for k, v in row.items()
            if k.startswith(VAL_PREFIX) and k not in fixed
        }
        return cls(
            epoch=int(row["epoch"]),
            train_loss=_float(row["train_loss"]),
            val_loss=_float(row["val_loss"]),
            metrics=metrics,
            lr=_float(row.get("lr")),
            samples_per_s=_float(row.get("samples_per_s")),
            step=int(row.get("step", 0)),
            epoch_time_s=_float(row.get("epoch_time_s")),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; `from_dict` reads it back."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": _num(self.train_loss),
            "val_loss": _num(self.val_loss),
            "metrics": _metrics_out(self.metrics),
            "lr": _num(self.lr),
            "samples_per_s": _num(self.samples_per_s),
            "epoch_time_s": _num(self.epoch_time_s),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochRecord:
        """Inverse of `to_dict()`."""
        _require(data, "EpochRecord", "epoch", "train_loss", "val_loss", "metrics")
        return cls(
            epoch=int(data["epoch"]),
            train_loss=_float(data["train_loss"]),
            val_loss=_float(data["val_loss"]),
            metrics=_metrics_in(data["metrics"]),
            lr=_float(data.get("lr")),
            samples_per_s=_float(data.get("samples_per_s")),
            step=int(data.get("step", 0)),
            epoch_time_s=_float(data.get("epoch_time_s")),
        )


@dataclass
class Checkpoints:
    """The run's checkpoint files: the best epoch by the primary metric, and the last."""

    best: str
    last: str

    def to_dict(self) -> dict[str, str]:
        """`{"best": path, "last": path}`."""
        return {"best": self.best, "last": self.last}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoints:
        """Inverse of `to_dict()`."""
        _require(data, "Checkpoints", "best", "last")
        return cls(best=str(data["best"]), last=str(data["last"]))


@dataclass
class TrainResult:
    """What `train()` returns (rank 0's view): where the run is, how it went, what ran."""

    run_id: str
    run_dir: str
    checkpoints: Checkpoints
    history: list[EpochRecord]  # every epoch of the run, resumed ones included
    primary_metric: PrimaryMetric
    wall_time_s: float  # this attempt
    world_size: int
    config: dict[str, Any]  # the effective config that ran (`exp.config_dict()`)
    resumed_from: str = ""  # the checkpoint this attempt started from, or empty
    samples_per_s: float = math.nan  # mean over the epochs trained in this attempt
    # the experiment tracker's run (`wandb_run_id`, `wandb_dir`), when one was used
    tracker: dict[str, str] = field(default_factory=dict)
    # the best checkpoint scored by rank 0 right after training, by split:
    # {"sha256", "dataset_path", "result": EvalResult.to_dict()} (training/after.py)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the best checkpoint as rank 0 loaded it then: {"sha256", "epoch"} (training/after.py)
    best_loaded: dict[str, Any] = field(default_factory=dict)

    @property
    def num_epochs(self) -> int:
        """Epochs in the history."""
        return len(self.history)

    @property
    def best_record(self) -> EpochRecord | None:
        """The epoch with the best validation value of the primary metric."""
        best: EpochRecord | None = None
        best_value = math.nan
        for record in self.history:
            value = record.metrics.get(self.primary_metric.name, math.nan)
            if best is None or self.primary_metric.better(value, best_value):
                best, best_value = record, value
        return best

    @property
    def best_value(self) -> float:
        """The primary metric's best validation value (NaN without history)."""
        record = self.best_record
        if record is None:
            return math.nan
        return record.metrics.get(self.primary_metric.name, math.nan)

    @property
    def final_train_loss(self) -> float:
        """The last epoch's training loss (NaN without history)."""
        return self.history[-1].train_loss if self.history else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with the derived values (`best_value`, `best_epoch`, ...) too."""
        best = self.best_record
        return {
            "run_id": self.run_id,
            "run_dir": self.run_dir,
            "checkpoints": self.checkpoints.to_dict(),
            "history": [r.to_dict() for r in self.history],
            "primary_metric": self.primary_metric.to_dict(),
            "wall_time_s": _num(self.wall_time_s),
            "world_size": int(self.world_size),
            "config": self.config,
            "resumed_from": self.resumed_from,
            "samples_per_s": _num(self.samples_per_s),
            "tracker": dict(self.tracker),
            "evaluations": {k: dict(v) for k, v in self.evaluations.items()},
            "best_loaded": dict(self.best_loaded),
            # derived, for readers that do not rebuild the dataclass (metadata, sensors)
            "num_epochs": self.num_epochs,
            "best_value": _num(self.best_value),
            "best_epoch": -1 if best is None else best.epoch,
            "final_train_loss": _num(self.final_train_loss),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainResult:
        """Inverse of `to_dict()` (the derived keys are recomputed, not read)."""
        keys = ("run_id", "run_dir", "checkpoints", "history", "primary_metric")
        _require(data, "TrainResult", *keys, "wall_time_s", "world_size", "config")
        return cls(
            run_id=str(data["run_id"]),
            run_dir=str(data["run_dir"]),
            checkpoints=Checkpoints.from_dict(data["checkpoints"]),
            history=[EpochRecord.from_dict(r) for r in data["history"]],
            primary_metric=PrimaryMetric.from_dict(data["primary_metric"]),
            wall_time_s=_float(data["wall_time_s"]),
            world_size=int(data["world_size"]),
            config=dict(data["config"]),
            resumed_from=str(data.get("resumed_from") or ""),
            samples_per_s=_float(data.get("samples_per_s")),
            tracker={str(k): str(v) for k, v in (data.get("tracker") or {}).items()},
            evaluations={str(k): dict(v) for k, v in (data.get("evaluations") or {}).items()},
            best_loaded=dict(data.get("best_loaded") or {}),
        )


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    """What `evaluate(checkpoint_path, split)` returns: metrics of one checkpoint file."""

    checkpoint: str  # the file that was loaded
    split: str
    primary_metric: PrimaryMetric
    metrics: dict[str, float]  # every scalar metric, the primary one included
    loss: float
    num_samples: int
    per_class: list[dict[str, Any]] = field(default_factory=list)  # classification only
    confusion_matrix: list[list[int]] = field(default_factory=list)  # classification only

    def __post_init__(self) -> None:
        if self.primary_metric.name not in self.metrics:
            raise ContractError(
                "EvalResult",
                f"metrics.{self.primary_metric.name}",
                f"is missing: the primary metric must be among {sorted(self.metrics)}",
            )

    @property
    def value(self) -> float:
        """The primary metric's value."""
        return self.metrics[self.primary_metric.name]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with `value` (the primary metric's) too."""
        return {
            "checkpoint": self.checkpoint,
            "split": self.split,
            "primary_metric": self.primary_metric.to_dict(),
            "value": _num(self.value),
            "metrics": _metrics_out(self.metrics),
            "loss": _num(self.loss),
            "num_samples": int(self.num_samples),
            "per_class": [dict(row) for row in self.per_class],
            "confusion_matrix": [[int(n) for n in row] for row in self.confusion_matrix],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Inverse of `to_dict()`."""
        keys = ("checkpoint", "split", "primary_metric", "metrics", "loss", "num_samples")
        _require(data, "EvalResult", *keys)
        return cls(
            checkpoint=str(data["checkpoint"]),
            split=str(data["split"]),
            primary_metric=PrimaryMetric.from_dict(data["primary_metric"]),
            metrics=_metrics_in(data["metrics"]),
            loss=_float(data["loss"]),
            num_samples=int(data["num_samples"]),
            per_class=[dict(row) for row in data.get("per_class") or []],
            confusion_matrix=[[int(n) for n in row] for row in data.get("confusion_matrix") or []],
        )
