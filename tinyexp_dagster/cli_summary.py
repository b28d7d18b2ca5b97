"""`tinyexp-dagster summary [--pipeline NAME]`: a pipeline's latest result and its champion.

With an evaluation asset: the latest `<name>/model_evaluation` (the primary metric on its
split, the champion it evaluated, its checkpoint). Without one (the experiment has no
`evaluate()`): the latest `<name>/trained_model`'s best validation metric. Nothing
materialized yet: the command that trains this pipeline (exit 1).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tinyexp_dagster.cli_location import (
    LocationError,
    Pipeline,
    PipelineChoiceError,
    add_location_options,
    all_pipelines,
    choose_pipeline,
    ui_hint,
)

EXIT_NOTHING_YET = 1
EXIT_BAD_INPUT = 2


def cmd_summary(args: argparse.Namespace) -> int:
    """Print a pipeline's latest evaluation (or training) metric and champion."""
    import dagster as dg

    try:
        pipelines, why = all_pipelines(args), ""
    except LocationError as err:
        pipelines, why = [], str(err)
    try:
        pipeline = choose_pipeline(pipelines, args.pipeline)
    except PipelineChoiceError as err:
        if args.pipeline is None:
            print(f"error: {why or err}; pass --pipeline NAME", file=sys.stderr)
            return EXIT_BAD_INPUT
        pipeline = None  # a name the location does not declare: what the instance holds
    name = args.pipeline or pipeline.name
    instance = dg.DagsterInstance.get()
    event, asset = _latest(instance, name, pipeline)
    if event is None:
        if pipeline is None:
            known = ", ".join(p.name for p in pipelines) or why or "none"
            print(f"error: no {name}/model_evaluation or {name}/trained_model materialization; "
                  f"the code location's pipelines: {known}", file=sys.stderr)  # fmt: skip
            return EXIT_BAD_INPUT
        print(f"no {name}/{asset} materialization yet: run `{pipeline.run_hint()}` first",
              file=sys.stderr)  # fmt: skip
        return EXIT_NOTHING_YET
    has_evaluation = asset == "model_evaluation"
    meta = event.asset_materialization.metadata
    partition = event.asset_materialization.partition
    where = f", trial {partition}" if partition else ""
    if has_evaluation:
        _print_evaluation(name, meta, where)
    else:
        _print_training(name, meta, event.run_id, where)
    print(ui_hint(args))
    return 0


def _latest(instance: Any, name: str, pipeline: Pipeline | None) -> tuple[Any, str]:
    """The latest evaluation (training, without an evaluation asset) and its asset's name."""
    import dagster as dg

    assets = ["model_evaluation", "trained_model"]
    if pipeline is not None:
        assets = [a for a in assets if a in pipeline.assets][:1]
    for asset in assets:
        event = instance.get_latest_materialization_event(dg.AssetKey([name, asset]))
        if event is not None:
            return event, asset
    return None, assets[0]


def _print_evaluation(name: str, meta: Any, where: str) -> None:
    metric = str(meta["primary_metric"].value).split(" ")[0]  # "accuracy (max)"
    print(f"{name} {metric} ({meta['split'].value} split{where}): {meta[metric].value:.4f}")
    if "champion_version" in meta:
        print(f"champion: {meta['champion_version'].value}")
    print(f"checkpoint: {meta['checkpoint'].value}")
    print(f"sha256: {meta['checkpoint_sha256'].value}")


def _print_training(name: str, meta: Any, run_id: str, where: str) -> None:
    metric = str(meta["primary_metric"].value).split(" ")[0] if "primary_metric" in meta else ""
    best = meta.get(f"best_val_{metric}")
    value = f"{best.value:.4f}" if best is not None else "-"
    print(f"{name} best val_{metric or '?'} (run {run_id[:8]}{where}): {value}")
    if "run_dir" in meta:
        print(f"run directory: {meta['run_dir'].value}")


def add_summary_command(sub: Any) -> None:
    """The `summary` subcommand."""
    summary = sub.add_parser("summary", help="a pipeline's latest metric and its champion")
    summary.add_argument(
        "--pipeline", "-p", default=None, help="the pipeline's name (default: the only one)"
    )
    add_location_options(summary)
    summary.set_defaults(func=cmd_summary)
