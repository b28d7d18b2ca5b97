"""Learning curves: per-epoch train/validation loss and the primary metric.

A run's own picture is an SVG written here without any plotting library (`svg_curves`):
the training asset draws it on the critical path of every run, where importing and
running matplotlib cost ~0.9 s. Comparing several runs (`tinyexp-dagster compare --plot`)
draws a PNG with matplotlib's Agg canvas on a `Figure` (`plot_curves`; no pyplot: no
global figure state, no display needed), imported inside the function so loading the
definitions stays light. Rows are `EpochRecord.to_row()` dicts with 1-based `epoch`s (as
the per-epoch table).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyexp_core.contract import val_key

__all__ = ["MAX_EPOCH_METADATA", "epoch_metadata", "plot_curves", "svg_curves"]

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


_PANEL_W, _PANEL_H, _PAD = 440, 300, (56, 16, 34, 44)  # panel size; left, right, top, bottom
_DASH = {"train": "", "val": ' stroke-dasharray="6 4"'}


def svg_curves(rows: list[dict[str, Any]], metric: str, path: str | Path) -> Path:
    """Write one run's curves as an SVG: losses (train solid, validation dashed) on the
    left, validation `metric` on the right; atomically, at `path`."""
    from tinyexp_core.files import atomic_write_bytes

    epochs = [int(row["epoch"]) for row in rows]
    panels = [
        ("loss", [("train", _series(rows, "train_loss")), ("val", _series(rows, "val_loss"))]),
        (f"validation {metric}", [("val", _series(rows, val_key(metric)))]),
    ]
    width, height = 2 * _PANEL_W, _PANEL_H
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for index, (title, series) in enumerate(panels):
        parts += _svg_panel(index * _PANEL_W, title, epochs, series)
    parts.append("</svg>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, ("\n".join(parts) + "\n").encode())
    return path


def _svg_panel(
    x0: int, title: str, epochs: list[int], series: list[tuple[str, list[float]]]
) -> list[str]:
    """One panel: frame, title, epoch and value ticks, a line with dots per series (gaps at
    NaN), the legend."""
    left, right, top, bottom = _PAD
    w, h = _PANEL_W - left - right, _PANEL_H - top - bottom
    last = max(epochs, default=1)
    values = [v for _, ys in series for v in ys if v == v]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    span = (hi - lo) or abs(hi) or 1.0
    lo, hi = lo - 0.05 * span, hi + 0.05 * span

    def x(epoch: float) -> float:
        return x0 + left + (epoch - 0.5) / last * w

    def y(value: float) -> float:
        return top + (hi - value) / (hi - lo) * h

    out = [
        f'<text x="{x0 + left + w / 2:.1f}" y="20" text-anchor="middle" font-size="13">'
        f"{_escape(title)}</text>",
        f'<rect x="{x0 + left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#444"/>',
    ]
    stride = max(1, -(-last // 10))
    for epoch in range(1, last + 1, stride):
        out.append(
            f'<text x="{x(epoch):.1f}" y="{top + h + 15}" text-anchor="middle">{epoch}</text>'
        )
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        out.append(f'<line x1="{x0 + left}" x2="{x0 + left + w}" y1="{y(value):.1f}" '
                   f'y2="{y(value):.1f}" stroke="#ddd"/>')  # fmt: skip
        out.append(f'<text x="{x0 + left - 4}" y="{y(value) + 4:.1f}" text-anchor="end">'
                   f"{value:.4g}</text>")  # fmt: skip
    out.append(f'<text x="{x0 + left + w / 2:.1f}" y="{_PANEL_H - 8}" text-anchor="middle">'
               "epoch</text>")  # fmt: skip
    for index, (name, ys) in enumerate(series):
        color = ("#1f77b4", "#ff7f0e")[index % 2]
        points = [(x(e), y(v)) for e, v in zip(epochs, ys, strict=True) if v == v]
        for segment in _segments(epochs, ys, x, y):
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{_DASH[name]} '
                       f'points="{segment}"/>')  # fmt: skip
        out += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>' for px, py in points]
        out.append(f'<text x="{x0 + left + w - 6}" y="{top + 14 + 14 * index}" '
                   f'text-anchor="end" fill="{color}">{name}</text>')  # fmt: skip
    return out


def _segments(epochs: list[int], ys: list[float], x: Any, y: Any) -> list[str]:
    """The runs of consecutive finite values as SVG point lists (NaN breaks a line)."""
    segments: list[list[str]] = [[]]
    for epoch, value in zip(epochs, ys, strict=True):
        if value == value:
            segments[-1].append(f"{x(epoch):.1f},{y(value):.1f}")
        elif segments[-1]:
            segments.append([])
    return [" ".join(s) for s in segments if len(s) > 1]


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
