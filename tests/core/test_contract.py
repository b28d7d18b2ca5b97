"""The experiment contract: JSON round trips, the primary metric's comparisons."""

import json
import math

import pytest

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.contract import (
    Checkpoints,
    ContractError,
    EpochRecord,
    EvalResult,
    PreparedData,
    PrimaryMetric,
    TrainResult,
)

ACC = PrimaryMetric("accuracy", "max")
RMSE = PrimaryMetric("rmse", "min")


def _json(data):
    # allow_nan=False: a NaN that leaked into to_dict() fails here
    return json.loads(json.dumps(data, allow_nan=False))


def test_primary_metric_direction():
    assert ACC.better(0.9, 0.8) and not ACC.better(0.8, 0.9) and not ACC.better(0.9, 0.9)
    assert RMSE.better(40.0, 50.0) and not RMSE.better(50.0, 40.0)
    assert ACC.better(0.1, math.nan) and not ACC.better(math.nan, 0.1)
    assert RMSE.best([55.0, math.nan, 48.0, 51.0]) == 48.0
    assert ACC.best([0.2, 0.7, 0.5]) == 0.7
    assert math.isnan(ACC.best([]))


def test_primary_metric_champion_gate():
    assert ACC.is_at_least_as_good(0.95, 0.96, tolerance=0.02)
    assert not ACC.is_at_least_as_good(0.93, 0.96, tolerance=0.02)
    assert RMSE.is_at_least_as_good(51.0, 50.0, tolerance=1.5)
    assert not RMSE.is_at_least_as_good(52.0, 50.0, tolerance=1.5)
    assert RMSE.is_at_least_as_good(49.0, None)
    assert not RMSE.is_at_least_as_good(math.nan, None)
    assert RMSE.passes(45.0, 50.0) and not RMSE.passes(55.0, 50.0)
    assert ACC.passes(0.95, 0.9) and not ACC.passes(0.85, 0.9)
    with pytest.raises(ConfigValueError, match="tolerance"):
        ACC.is_at_least_as_good(1.0, 1.0, tolerance=-1)


def test_primary_metric_rejects_unknown_direction():
    with pytest.raises(ConfigValueError, match="'up'.*'max', 'min'"):
        PrimaryMetric("accuracy", "up")
    assert PrimaryMetric.from_dict(_json(RMSE.to_dict())) == RMSE


def test_prepared_data_round_trip():
    data = PreparedData(
        path="/s/datasets/diabetes/abc",
        data_version="abc",
        source="diabetes",
        counts={"train": 300, "val": 50, "test": 92},
        files={"train.pt": {"sha256": "00ff", "size": 10}},
        shape=[10],
        params={"seed": 0},
    )
    again = PreparedData.from_dict(_json(data.to_dict()))
    assert again == data
    assert again.manifest_path == "/s/datasets/diabetes/abc/manifest.json"
    with pytest.raises(ContractError, match="'data_version' is missing"):
        PreparedData.from_dict({"path": "/x"})


def _history():
    return [
        EpochRecord(0, 2.0, 1.5, {"rmse": 60.0}, lr=1e-3, samples_per_s=1000.0, step=10),
        EpochRecord(1, 1.0, 1.1, {"rmse": 52.0}, lr=1e-3, samples_per_s=1100.0, step=20),
        EpochRecord(2, 0.9, 1.2, {"rmse": 55.0}, lr=5e-4, samples_per_s=math.nan, step=30),
    ]


def test_train_result_round_trip_and_best_epoch():
    result = TrainResult(
        run_id="r1",
        run_dir="/s/runs/r1",
        checkpoints=Checkpoints(best="/s/runs/r1/checkpoints/best.pt", last="/x/last.pt"),
        history=_history(),
        primary_metric=RMSE,
        wall_time_s=3.5,
        world_size=2,
        config={"train_cfg": {"num_epochs": 3}},
        resumed_from="",
        samples_per_s=1050.0,
    )
    data = _json(result.to_dict())
    assert data["best_value"] == 52.0 and data["best_epoch"] == 1
    assert data["history"][2]["samples_per_s"] is None  # NaN is not JSON
    again = TrainResult.from_dict(data)
    assert again.best_record.epoch == 1 and again.num_epochs == 3
    assert math.isnan(again.history[2].samples_per_s)
    assert again.history[:2] == result.history[:2]
    assert again.final_train_loss == 0.9
    with pytest.raises(ContractError, match="'checkpoints' is missing"):
        TrainResult.from_dict({k: v for k, v in data.items() if k != "checkpoints"})


def test_epoch_record_reads_flat_rows():
    row = {
        "epoch": 3,
        "step": 40,
        "lr": 0.1,
        "train_loss": 0.3,
        "val_loss": 0.4,
        "val_accuracy": 0.97,
        "samples_per_s": 900.0,
        "epoch_time_s": 2.0,
    }
    record = EpochRecord.from_row(row)
    assert record.metrics == {"accuracy": 0.97}
    assert record.metric("accuracy") == 0.97
    assert record.to_row() == row
    with pytest.raises(KeyError, match="no metric 'rmse'"):
        record.metric("rmse")


def test_eval_result_requires_primary_metric():
    result = EvalResult(
        checkpoint="/m/model.pt",
        split="test",
        primary_metric=ACC,
        metrics={"accuracy": 0.98, "macro_f1": 0.97},
        loss=0.07,
        num_samples=360,
        per_class=[{"class": 0, "precision": 1.0}],
        confusion_matrix=[[3, 0], [1, 4]],
    )
    assert result.value == 0.98
    assert EvalResult.from_dict(_json(result.to_dict())) == result
    with pytest.raises(ContractError, match="metrics.rmse"):
        EvalResult("/m", "test", RMSE, {"mae": 1.0}, 1.0, 10)
