"""`tinyexp-dagster compare A B`: two training runs side by side.

A and B are each a Dagster run id or any unique prefix of one (the UI shows 8 characters), a
partition key (a sweep's trial) or a model version (the run directory's id, as `tinyexp-dagster
models` lists them; a unique prefix too), resolved against the `<pipeline>/trained_model`
materializations in the Dagster instance (DAGSTER_HOME): `--pipeline`'s, else every
pipeline's. An exact match wins; a prefix of several runs is an error listing them. Printed:
the overrides that differ, the effective config keys that differ, the metric deltas (B - A)
and the per-epoch values side by side; `--plot PATH` draws both runs' curves on one PNG.
Exit status 2: a reference that names no materialization or several runs, or no Dagster
instance.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
_SEARCHED = 10_000  # trained_model materializations looked at, newest first


class UnknownReferenceError(LookupError):
    """A reference that is none of a run id, partition key or model version."""


@dataclass
class TrainedRun:
    """What compare shows of one trained_model materialization."""

    reference: str
    run_id: str  # the Dagster run that materialized it
    version: str  # its run directory's id: the model version it registers as
    partition: str | None
    metric: str
    overrides: list[str]
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # the per-epoch table
    values: dict[str, float | None]  # the headline numbers


class AmbiguousReferenceError(UnknownReferenceError):
    """A prefix of several runs' ids (or versions); the message lists them."""


def resolve(instance: Any, pipeline: str | None, reference: str) -> TrainedRun:
    """The newest trained_model materialization that `reference` names: exactly (a run id,
    partition key or version), else as the prefix of one run's id or version."""
    records = _trained_records(instance, pipeline)
    where = f"{pipeline}/trained_model" if pipeline else "any pipeline's trained_model"
    if not reference:
        raise UnknownReferenceError(f"an empty reference names no run of {where}")
    found = []  # (record, version), newest first
    for record in records:
        mat = record.asset_materialization
        run_dir = mat.metadata.get("run_dir")
        version = Path(str(run_dir.value)).name if run_dir is not None else ""
        if reference in (record.run_id, version, mat.partition):
            return _trained_run(reference, record.run_id, version, mat)
        found.append((record, version))
    by_run = {}  # run id -> its newest (record, version) whose id or version starts so
    for record, version in found:
        if record.run_id.startswith(reference) or (version and version.startswith(reference)):
            by_run.setdefault(record.run_id, (record, version))
    if len(by_run) == 1:
        record, version = next(iter(by_run.values()))
        return _trained_run(reference, record.run_id, version, record.asset_materialization)
    if by_run:
        listed = "; ".join(_candidate(record, version) for record, version in by_run.values())
        raise AmbiguousReferenceError(
            f"{reference!r} is the prefix of {len(by_run)} runs of {where}: {listed}"
        )
    raise UnknownReferenceError(
        f"{reference!r} is not a run id, partition key or model version of {where} "
        f"({len(records)} materializations searched)"
    )


def _candidate(record: Any, version: str) -> str:
    mat = record.asset_materialization
    trial = f", trial {mat.partition}" if mat.partition else ""
    own = f", version {version}" if version and version != record.run_id else ""
    return f"run {record.run_id} ({mat.asset_key.to_user_string()}{trial}{own})"


def _trained_records(instance: Any, pipeline: str | None) -> list[Any]:
    """`<pipeline>/trained_model` materializations (every pipeline's without one), newest
    first."""
    import dagster as dg

    if pipeline is not None:
        keys = [dg.AssetKey([pipeline, "trained_model"])]
    else:
        keys = [k for k in instance.get_asset_keys() if k.path[-1] == "trained_model"]
    records = [
        record
        for key in keys
        for record in instance.fetch_materializations(key, limit=_SEARCHED).records
    ]
    return sorted(records, key=lambda r: r.storage_id, reverse=True)


def plot_label(tag: str, run: TrainedRun) -> str:
    """A legend entry that tells the two runs apart: the whole trial key, the short run id."""
    if run.partition:
        return f"{tag} {run.partition} (run {run.run_id[:8]})"
    return f"{tag} run {run.run_id[:8]}"


def _trained_run(reference: str, run_id: str, version: str, mat: Any) -> TrainedRun:
    meta = mat.metadata
    metric = str(meta["primary_metric"].value).split(" ")[0]  # "accuracy (max)"
    table = meta.get("per_epoch")
    rows = [dict(record.data) for record in table.records] if table is not None else []
    keys = (f"best_val_{metric}", "final_train_loss", "epochs", "samples_per_s", "wall_time_s")
    return TrainedRun(
        reference=reference,
        run_id=run_id,
        version=version,
        partition=mat.partition,
        metric=metric,
        overrides=list(meta["overrides"].value) if "overrides" in meta else [],
        config=dict(meta["effective_config"].value) if "effective_config" in meta else {},
        rows=rows,
        values={k: meta[k].value if k in meta else None for k in keys},
    )


def overrides_diff(a: list[str], b: list[str]) -> list[tuple[str, str, str]]:
    """(key, A's value, B's value) of every override key set differently ('-': unset)."""
    da, db = _as_dict(a), _as_dict(b)
    keys = list(dict.fromkeys([*da, *db]))
    return [(k, da.get(k, "-"), db.get(k, "-")) for k in keys if da.get(k) != db.get(k)]


def _as_dict(overrides: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for override in overrides:
        key, _, value = override.partition("=")
        out[key.strip()] = value.strip()  # the last one wins, as when they are applied
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(dotted key, A's value, B's value) of every effective config leaf that differs."""
    fa, fb = _flatten(a), _flatten(b)
    keys = list(dict.fromkeys([*fa, *fb]))
    return [(k, fa.get(k, "-"), fb.get(k, "-")) for k in keys if fa.get(k) != fb.get(k)]


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def metric_deltas(a: TrainedRun, b: TrainedRun) -> list[tuple[str, Any, Any, str]]:
    """(name, A, B, B - A) of the headline numbers."""
    out = []
    for name in a.values:
        va, vb = a.values.get(name), b.values.get(name)
        delta = (
            f"{vb - va:+.4f}"
            if isinstance(va, (int, float)) and isinstance(vb, (int, float))
            else "-"
        )
        out.append((name, _fmt(va), _fmt(vb), delta))
    return out


def epochs_side_by_side(a: TrainedRun, b: TrainedRun) -> list[list[str]]:
    """Rows: epoch, then A's and B's train_loss, val_loss and val_<metric>."""
    columns = ("train_loss", "val_loss", f"val_{a.metric}")
    header = ["epoch", *(f"A {c}" for c in columns), *(f"B {c}" for c in columns)]
    by_epoch_a = {row["epoch"]: row for row in a.rows}
    by_epoch_b = {row["epoch"]: row for row in b.rows}
    lines = [header]
    for epoch in sorted({*by_epoch_a, *by_epoch_b}):
        ra, rb = by_epoch_a.get(epoch, {}), by_epoch_b.get(epoch, {})
        lines.append(
            [str(epoch), *(_fmt(ra.get(c)) for c in columns), *(_fmt(rb.get(c)) for c in columns)]
        )
    return lines


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _print_table(rows: list[list[str]] | list[tuple], indent: str = "  ") -> None:
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_compare(args: argparse.Namespace) -> int:
    """Print two runs' config diff, metric deltas and per-epoch values; optionally plot."""
    import dagster as dg

    try:
        instance = dg.DagsterInstance.get()
    except dg.DagsterHomeNotSetError as err:
        print(f"error: no Dagster instance to read runs from: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        a, b = (resolve(instance, args.pipeline, ref) for ref in (args.a, args.b))
    except UnknownReferenceError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for label, run in (("A", a), ("B", b)):
        where = f", partition {run.partition}" if run.partition else ""
        print(f"{label}: {run.reference}  (dagster run {run.run_id}, version {run.version}{where})")
    print("overrides (A | B):")
    _print_table([("key", "A", "B"), *overrides_diff(a.overrides, b.overrides)])
    print("effective config differences (A | B):")
    _print_table([("key", "A", "B"), *config_diff(a.config, b.config)])
    print("metrics (B - A):")
    _print_table([("metric", "A", "B", "B - A"), *metric_deltas(a, b)])
    print("per epoch:")
    _print_table(epochs_side_by_side(a, b))
    if args.plot:
        from tinyexp_dagster.curves import plot_curves

        path = plot_curves(
            [(plot_label("A", a), a.rows), (plot_label("B", b), b.rows)],
            a.metric,
            args.plot,
        )
        print(f"curves: {path} (legend: {plot_label('A', a)} | {plot_label('B', b)})")
    return 0


def add_compare_command(sub: Any) -> None:
    """The `compare` subcommand."""
    compare = sub.add_parser("compare", help="two training runs side by side")
    compare.add_argument("a", help="a run id (or a unique prefix), partition key or model version")
    compare.add_argument("b", help="another one")
    compare.add_argument(
        "--pipeline", "-p", default=None, help="search this pipeline's runs (default: every one)"
    )
    compare.add_argument("--plot", metavar="PATH", help="write both runs' curves to this PNG")
    compare.set_defaults(func=cmd_compare)
