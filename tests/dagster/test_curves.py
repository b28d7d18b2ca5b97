"""Learning curves without training: the PNG is drawn from per-epoch rows, and the numeric
per-epoch metadata keeps every epoch up to its cap, then thins evenly, last epoch kept."""

from __future__ import annotations

from pathlib import Path

from tinyexp_dagster.curves import MAX_EPOCH_METADATA, epoch_metadata, plot_curves


def rows(num_epochs: int) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_rmse": 50.0 - e}
        for e in range(1, num_epochs + 1)
    ]


def test_plot_writes_a_png_of_both_runs(tmp_path: Path) -> None:
    path = plot_curves([("a", rows(3)), ("b", rows(5))], "rmse", tmp_path / "x" / "c.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in path.parent.iterdir()] == ["c.png"]  # no temp file left


def test_epoch_metadata_values_and_thinning() -> None:
    small = epoch_metadata(rows(2), "rmse")
    assert small == {
        "train_loss_epoch_001": 1.0,
        "val_loss_epoch_001": 1.2,
        "val_rmse_epoch_001": 49.0,
        "train_loss_epoch_002": 0.5,
        "val_loss_epoch_002": 0.6,
        "val_rmse_epoch_002": 48.0,
    }
    many = epoch_metadata(rows(200), "rmse")
    epochs = sorted({int(k.rsplit("_", 1)[1]) for k in many})
    assert len(epochs) == MAX_EPOCH_METADATA and epochs[0] == 1 and epochs[-1] == 200
    nan_row = [{"epoch": 1, "train_loss": float("nan"), "val_loss": None, "val_rmse": 3.0}]
    assert epoch_metadata(nan_row, "rmse") == {"val_rmse_epoch_001": 3.0}
