"""Learning curves without training: the run's SVG and the comparison PNG are drawn from
per-epoch rows, and the numeric per-epoch metadata keeps every epoch up to its cap, then
thins evenly, last epoch kept."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from tinyexp_dagster.curves import MAX_EPOCH_METADATA, epoch_metadata, plot_curves, svg_curves


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


def test_svg_of_one_run_has_a_line_per_series_with_gaps_at_nan(tmp_path: Path) -> None:
    epochs = rows(5)
    epochs[2]["val_loss"] = float("nan")  # a gap: the dashed line breaks in two
    path = svg_curves(epochs, "rmse", tmp_path / "x" / "c.svg")
    root = ET.fromstring(path.read_text())  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    dashed = [line for line in lines if line.get("stroke-dasharray")]
    assert len(lines) == 4 and len(dashed) == 3  # train; val in two pieces; val rmse
    assert len(root.findall(f"{ns}circle")) == 5 + 4 + 5  # a dot per finite value
    texts = [t.text for t in root.findall(f"{ns}text")]
    assert {"loss", "validation rmse", "train", "val", "epoch"} <= set(texts)
    assert [t for t in texts if re.fullmatch(r"[1-5]", t or "")] == list("12345") * 2
    assert [p.name for p in path.parent.iterdir()] == ["c.svg"]  # no temp file left


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
