"""`tinyexp-dagster models|promote`: a pipeline's model versions and its champion alias.

tinyexp-dagster models NAME                        versions, metric, data version, champion mark
tinyexp-dagster promote NAME VERSION --reason TEXT move the champion alias by hand (rollback)

Exit status 2: an unknown model or version, an empty reason, or no Dagster instance to record
the move in (DAGSTER_HOME).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


def _registry(args: argparse.Namespace) -> Any:
    from .registry import ModelRegistry

    return ModelRegistry(Path(args.storage_root).expanduser().resolve() / "models", args.name)


def cmd_models(args: argparse.Namespace) -> int:
    """List the versions of model NAME, oldest first, the champion marked with `*`."""
    from .registry import UnknownModelError

    try:
        registry = _registry(args)
    except UnknownModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    versions = registry.versions()
    if not versions:
        print(f"error: no versions of model {args.name} under {registry.root}", file=sys.stderr)
        return EXIT_BAD_INPUT
    champion = registry.champion_version()
    metric = versions[-1]["primary_metric"]["name"]
    rows = [["", "version", f"val_{metric}", "data_version", "config_hash", "created"]]
    for v in versions:
        value = v.get("val_value")
        rows.append(
            [
                "*" if v["version"] == champion else "",
                v["version"],
                "nan" if value is None else f"{value:.4f}",
                v.get("data_version") or "-",
                v.get("config_hash") or "-",
                v.get("created", ""),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"champion: {champion or 'none'} (* above)")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Move NAME's champion alias to VERSION; recorded in the alias history and, as an
    observation of `<pipeline>/model_checkpoint`, in Dagster."""
    import dagster as dg

    from .registry import UnknownModelError

    reason = (args.reason or "").strip()
    if not reason:
        print("error: --reason must say why the champion moves (non-empty text)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        registry = _registry(args)
        record = registry.version(args.version)
        instance = dg.DagsterInstance.get()  # before moving: the move must reach Dagster too
    except UnknownModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except dg.DagsterHomeNotSetError as err:
        print(f"error: no Dagster instance to record the move in: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    moved_by = f"{getpass.getuser()} via tinyexp-dagster promote"
    with registry.locked():
        move = registry.move_champion(args.version, moved_by=moved_by, reason=reason)
    pipeline = record.get("pipeline") or args.name
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=dg.AssetKey([pipeline, "model_checkpoint"]),
            metadata={
                "champion": args.version,
                "previous_champion": move["previous"] or "none",
                "reason": reason,
                "moved_by": moved_by,
                "model_path": dg.MetadataValue.path(record["path"]),
            },
        )
    )
    print(f"champion of {args.name}: {move['previous'] or 'none'} -> {args.version} ({reason})")
    return 0


def add_model_commands(sub: Any) -> None:
    """The `models` and `promote` subcommands."""
    models = sub.add_parser("models", help="a model's versions and its champion")
    models.add_argument("name", help="the model's name (the pipeline's, by default)")
    models.set_defaults(func=cmd_models)
    promote = sub.add_parser("promote", help="move a model's champion alias (e.g. a rollback)")
    promote.add_argument("name", help="the model's name")
    promote.add_argument("version", help="the version to make champion")
    promote.add_argument("--reason", required=True, help="why (recorded with the move)")
    promote.set_defaults(func=cmd_promote)
