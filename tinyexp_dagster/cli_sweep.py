"""`tinyexp-dagster sweep PIPELINE [list|run|leaderboard]`: a sweep from the terminal.

tinyexp-dagster sweep NAME                   the trials: partition key, state, epochs, metric, run
tinyexp-dagster sweep NAME run KEY [KEY ...] train these trials (no daemon needed)
tinyexp-dagster sweep NAME run --all         train every trial
tinyexp-dagster sweep NAME leaderboard       materialize `NAME/sweep_leaderboard`, print it

A trial is a run of NAME_training_pipeline with its partition, as `dagster job execute
<location> -j NAME_training_pipeline` runs it, in a trial worker: a process that loads the
location and joins Ray once, then runs trial after trial (its output in
`<storage_root>/sweeps/NAME/<trial>.log`), so it is recorded in the project's Dagster
instance (DAGSTER_HOME) like a run from the UI. At most the sweep's `max_concurrent` trials
train at once: the pipeline's pool sensor sets that limit on the pool `tinyexp_NAME_sweep`
in the instance first, and this command starts no more workers than it. The runs join the
local Ray of `tinyexp-dagster ray up` (recorded under the storage root) or `RAY_ADDRESS`;
with neither and more than one trial to run, a local Ray is started for the trials and
stopped after them. A missing `NAME/prepared_dataset` is materialized first; the
leaderboard is refreshed at the end.
Exit status: 0 every trial succeeded, 1 one failed, 2 a bad pipeline, trial or location,
130 interrupted (each busy worker got one SIGINT: its trial's ranks checkpoint and stop).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tinyexp_dagster.cli_location import (
    LocationError,
    Pipeline,
    PipelineChoiceError,
    add_location_options,
    all_pipelines,
    choose_pipeline,
)
from tinyexp_dagster.cli_sweep_run import print_leaderboard, print_rows, run_trials
from tinyexp_dagster.resources.storage import ENV_STORAGE_ROOT
from tinyexp_dagster.sweep.trials import trial_rows

ACTIONS = ("list", "run", "leaderboard")
EXIT_BAD_INPUT = 2


def cmd_sweep(args: argparse.Namespace) -> int:
    """List, run or rank a sweep's trials."""
    import dagster as dg

    # Before the location loads: its resources read the storage root from the environment.
    root = str(Path(args.storage_root).expanduser().resolve())
    os.environ[ENV_STORAGE_ROOT] = root
    try:
        pipelines = all_pipelines(args)
        name, action, keys = _words(args.words, pipelines)
        pipeline = choose_pipeline(pipelines, name, needs_sweep=True)
        unknown = [k for k in keys if k not in pipeline.trial_keys]
        if unknown:
            raise PipelineChoiceError(
                f"trial {unknown[0]!r} is not a partition of {pipeline.name}: "
                f"{', '.join(pipeline.trial_keys)}"
            )
    except (LocationError, PipelineChoiceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    instance = dg.DagsterInstance.get()
    if action == "list":
        print_rows(trial_rows(instance, pipeline))
        return 0
    if action == "leaderboard":
        return print_leaderboard(instance, pipeline)
    if not keys and not args.all:
        print(f"error: name the trials to run, or --all: {', '.join(pipeline.trial_keys)}",
              file=sys.stderr)  # fmt: skip
        return EXIT_BAD_INPUT
    return run_trials(instance, pipeline, list(pipeline.trial_keys) if args.all else keys, root)


def _words(words: list[str], pipelines: list[Pipeline]) -> tuple[str | None, str, list[str]]:
    """(pipeline, action, trial keys) from `[PIPELINE] [ACTION] [KEY ...]`."""
    names = {p.name for p in pipelines}
    name = None
    if words and (words[0] in names or words[0] not in ACTIONS):
        name, words = words[0], words[1:]
    action = words[0] if words else "list"
    if action not in ACTIONS:
        raise PipelineChoiceError(f"sweep action {action!r}: expected one of {', '.join(ACTIONS)}")
    keys = words[1:]
    if keys and action != "run":
        raise PipelineChoiceError(f"sweep {action} takes no trial keys (got {keys[0]!r})")
    return name, action, keys


def add_sweep_command(sub: Any) -> None:
    """The `sweep` subcommand."""
    sweep = sub.add_parser(
        "sweep",
        help="a sweep's trials: list, run (no daemon needed), leaderboard",
        description=__doc__.split("\n\n")[1],
        usage="tinyexp-dagster sweep [PIPELINE] [list|run|leaderboard] [KEY ...] [--all] "
        "[-m MODULE | -f FILE | -w WORKSPACE]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument(
        "words",
        nargs="*",
        metavar="WORD",
        help="the sweep pipeline (default: the only one), the action (default list) and, "
        "for run, the trials' partition keys",
    )
    sweep.add_argument("--all", action="store_true", help="run: every trial of the sweep")
    add_location_options(sweep)
    sweep.set_defaults(func=cmd_sweep)
