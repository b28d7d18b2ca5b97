"""Learning curves: per-epoch train/validation loss and the primary metric, as a PNG.

Drawn with matplotlib's Agg canvas on a `Figure` (no pyplot: no global figure state, no
display needed), imported inside the function so loading the definitions stays light.
Rows are `EpochRecord.to_row()` dicts with 1-based `epoch`s (as the per-epoch table).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyexp_core.contract import val_key

__all__ = ["MAX_EPOCH_METADATA", "epoch_metadata", "plot_curves"]

MAX_EPOCH_METADATA = 50  # per-epoch numeric metadata entries per series (evenly thinned)


def plot_curves(
    runs: Sequence[tuple[str, list[dict[str, Any]]]], metric: str, path: str | Path
) -> Path:
    """Write one picture of every run's curves: losses (train solid, validation dashed)
    on the left, validation `metric` on the right; atomically, at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from tinyexp_core.files import atomic_write_bytes

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    losses, metrics = figure.subplots(1, 2)
    for index, (label, rows) in enumerate(runs):
        color = f"C{index}"
        epochs = [row["epoch"] for row in rows]
        losses.plot(epochs, _series(rows, "train_loss"), "-o", color=color, label=f"{label} train")
        losses.plot(epochs, _series(rows, "val_loss"), "--o", color=color, label=f"{label} val")
        metrics.plot(epochs, _series(rows, val_key(metric)), "-o", color=color, label=label)
    losses.set(title="loss", xlabel="epoch", ylabel="loss")
    metrics.set(title=f"validation {metric}", xlabel="epoch", ylabel=metric)
    last = max((row["epoch"] for _, rows in runs for row in rows), default=1)
    for axes in (losses, metrics):
        axes.set_xlim(0.5, last + 0.5)  # whole epochs, even for a 1-epoch run
        if last <= 20:
            axes.set_xticks(range(1, last + 1))
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _series(rows: list[dict[str, Any]], column: str) -> list[float]:
    """A column as floats, NaN where missing (matplotlib leaves a gap)."""
    return [float("nan") if row.get(column) is None else float(row[column]) for row in rows]


def epoch_metadata(rows: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """`<series>_epoch_<NNN>` numeric entries (train_loss, val_loss, val_<metric>): Dagster
    plots each numeric entry across materializations. At most MAX_EPOCH_METADATA epochs per
    series, evenly spaced, the last one always kept."""
    if len(rows) > MAX_EPOCH_METADATA:
        step = (len(rows) - 1) / (MAX_EPOCH_METADATA - 1)
        rows = [rows[round(i * step)] for i in range(MAX_EPOCH_METADATA)]
    out: dict[str, float] = {}
    for row in rows:
        for column in ("train_loss", "val_loss", val_key(metric)):
            value = row.get(column)
            if isinstance(value, (int, float)) and value == value:  # not NaN
                out[f"{column}_epoch_{int(row['epoch']):03d}"] = float(value)
    return out
