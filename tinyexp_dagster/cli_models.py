"""`tinyexp-dagster models|promote`: a pipeline's model versions and its champion alias.

tinyexp-dagster models                             every model: versions, champion, its metric
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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinyexp_core.registry import ModelRegistry, ModelVersion

EXIT_BAD_INPUT = 2


def _models_dir(args: argparse.Namespace) -> Path:
    return Path(args.storage_root).expanduser().resolve() / "models"


def _registry(args: argparse.Namespace) -> ModelRegistry:
    from tinyexp_core.registry import ModelRegistry

    return ModelRegistry(_models_dir(args), args.name)


def _train_hint(args: argparse.Namespace, name: str | None) -> str:
    """How this project trains a model (best effort: the pipelines' own commands)."""
    from tinyexp_dagster.cli_location import LocationError, all_pipelines

    try:
        pipelines = [p for p in all_pipelines(args) if name is None or p.name == name]
    except LocationError:
        pipelines = []
    if not pipelines:
        return (
            "train a pipeline first (`dagster dev` in the project's folder, or "
            "`dagster job execute -m <module> -j <name>_training_pipeline`)"
        )
    return "train one first: " + "; ".join(f"`{p.run_hint()}`" for p in pipelines)


def cmd_models(args: argparse.Namespace) -> int:
    """Without NAME: every model with its champion; with NAME: its versions, oldest first,
    the champion marked with `*`."""
    from tinyexp_core.registry import UnknownModelError

    if args.name is None:
        return _list_models(args)
    try:
        registry = _registry(args)
    except UnknownModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    versions = registry.versions()
    if not versions:
        print(f"error: no versions of model {args.name} under {registry.root}; "
              f"{_train_hint(args, args.name)}", file=sys.stderr)  # fmt: skip
        return EXIT_BAD_INPUT
    champion = registry.champion_version()
    metric = versions[-1].primary_metric.name
    rows = [["", "version", f"val_{metric}", "data_version", "config_hash", "created"]]
    for v in versions:
        rows.append(
            [
                "*" if v.version == champion else "",
                v.version,
                _value(v),
                v.data_version or "-",
                v.config_hash or "-",
                v.created,
            ]
        )
    _print_rows(rows)
    print(f"champion: {champion or 'none'} (* above)")
    return 0


def _list_models(args: argparse.Namespace) -> int:
    """One line per model under the storage root: versions, champion and its metric."""
    from tinyexp_core.registry import ModelRegistry, UnknownModelError

    models_dir = _models_dir(args)
    folders = models_dir.iterdir() if models_dir.is_dir() else ()
    names = sorted(p.name for p in folders if p.is_dir())
    rows = [["model", "versions", "champion", "metric", "latest"]]
    for name in names:
        try:
            registry = ModelRegistry(models_dir, name)
        except UnknownModelError:  # a folder that is no model's (not a valid name)
            continue
        versions = registry.versions()
        if not versions:
            continue
        champion = registry.champion_version()
        record = next((v for v in versions if v.version == champion), None)
        metric = versions[-1].primary_metric.name
        shown = f"val_{metric} {_value(record)}" if record is not None else "-"
        rows.append([name, str(len(versions)), champion or "none", shown, versions[-1].version])
    if len(rows) == 1:
        print(f"no models under {models_dir}; {_train_hint(args, None)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _print_rows(rows)
    print("versions of one model: tinyexp-dagster models NAME")
    return 0


def _value(version: ModelVersion) -> str:
    value = version.val_value
    return "nan" if value is None else f"{value:.4f}"


def _print_rows(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def cmd_promote(args: argparse.Namespace) -> int:
    """Move NAME's champion alias to VERSION; recorded in the alias history and, as an
    observation of `<pipeline>/model_checkpoint`, in Dagster."""
    import dagster as dg

    from tinyexp_core.registry import UnknownModelError

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
    pipeline = record.pipeline or args.name
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=dg.AssetKey([pipeline, "model_checkpoint"]),
            metadata={
                "champion": args.version,
                "previous_champion": move["previous"] or "none",
                "reason": reason,
                "moved_by": moved_by,
                "model_path": dg.MetadataValue.path(record.path),
            },
        )
    )
    print(f"champion of {args.name}: {move['previous'] or 'none'} -> {args.version} ({reason})")
    return 0


def add_model_commands(sub: Any) -> None:
    """The `models` and `promote` subcommands."""
    from tinyexp_dagster.cli_location import add_location_options

    models = sub.add_parser("models", help="every model and its champion, or one's versions")
    models.add_argument(
        "name", nargs="?", help="the model's name (a pipeline's); default: list every model"
    )
    add_location_options(models)  # for the hint that names how this project trains
    models.set_defaults(func=cmd_models)
    promote = sub.add_parser("promote", help="move a model's champion alias (e.g. a rollback)")
    promote.add_argument("name", help="the model's name")
    promote.add_argument("version", help="the version to make champion")
    promote.add_argument("--reason", required=True, help="why (recorded with the move)")
    promote.set_defaults(func=cmd_promote)
