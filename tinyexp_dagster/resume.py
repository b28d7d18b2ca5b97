"""`tinyexp-dagster resume RUN_ID`: launch the run that continues a stopped one.

Dagster does not re-execute a terminated (CANCELED) run, and a re-execution of a failed one
is the only way it continues a run. This launches a new run of the same job with the same
asset (or op) selection, run config and partition, tagged `tinyexp/resumed_from_run=<RUN_ID>`
and `tinyexp/resume_run_dir=<its run directory>`, so `trained_model` continues the stopped
run's directory from its last valid checkpoint: mid-epoch when that is a step checkpoint.

It loads the code the stopped run was launched from (the run's recorded code origin: a
module, a file or a workspace's location) and executes the new run in this process, as
`dagster job execute` does; it prints the new run's id and final status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from tinyexp_dagster.assets.plan import RESUME_RUN_DIR_TAG, run_dir_id

RESUMED_FROM_RUN_TAG = "tinyexp/resumed_from_run"
# Dagster's own tags that describe what a run computes (its partition); the others describe
# how that run was launched (UI, sensor, retry) and are not the new run's.
_KEPT_DAGSTER_TAGS = (
    "dagster/partition",
    "dagster/partition_set",
    "dagster/asset_partition_range_start",
    "dagster/asset_partition_range_end",
)
_TINYEXP_RUN_TAGS = (RESUME_RUN_DIR_TAG, RESUMED_FROM_RUN_TAG, "tinyexp/stalled_run")


class ResumeRefused(Exception):
    """A run that `resume` cannot continue; the message names the run id and why."""


@dataclass(frozen=True)
class ResumePlan:
    """What the resume run is: the stopped run, its job, selection, config, tags, checkpoint."""

    run: Any  # the stopped DagsterRun
    run_dir_id: str
    checkpoint: str
    run_config: dict[str, Any]
    tags: dict[str, str]


def plan_resume(instance: dg.DagsterInstance, run_id: str, storage_root: str | Path) -> ResumePlan:
    """Check that `run_id` can be resumed and describe its resume run (nothing launched)."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ResumeRefused(f"no Dagster run with id {run_id!r} in this instance")
    if not run.is_finished:
        raise ResumeRefused(
            f"run {run_id} is {run.status.value}: still in progress; terminate it first"
        )
    if run.status == dg.DagsterRunStatus.SUCCESS:
        raise ResumeRefused(f"run {run_id} succeeded: nothing to resume")
    # The directory its trained_model wrote: a retry's or resume's is the one it continued.
    dir_id = run_dir_id(run)
    checkpoints = Path(storage_root) / "runs" / dir_id / "checkpoints"
    checkpoint = _latest_valid(checkpoints, run_id)
    return ResumePlan(
        run=run,
        run_dir_id=dir_id,
        checkpoint=checkpoint,
        run_config=resume_run_config(run.run_config),
        tags={
            **_carried_tags(run.tags),
            RESUME_RUN_DIR_TAG: dir_id,
            RESUMED_FROM_RUN_TAG: run.run_id,
        },
    )


def _latest_valid(directory: Path, run_id: str) -> str:
    """The checkpoint a resume would start from (verified); refused when there is none."""
    from tinyexp_core.checkpoint import CheckpointManager
    from tinyexp_core.config.exceptions import CheckpointCorruptError

    why = ""
    found = None
    if directory.is_dir():
        try:
            found = CheckpointManager(directory).latest_valid()
        except CheckpointCorruptError as err:  # every candidate is damaged
            why = f" ({err})"
    if found is None:
        raise ResumeRefused(
            f"run {run_id} has nothing to resume: no valid checkpoint under {directory}{why}"
        )
    return found[0]


def _carried_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in tags.items()
        if (not k.startswith("dagster/") or k in _KEPT_DAGSTER_TAGS) and k not in _TINYEXP_RUN_TAGS
    }


def resume_run_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The stopped run's config with `resume: auto` on each `trained_model` op (a resume run
    continues its checkpoint even if the stopped run was told to start from scratch)."""
    config = dict(run_config or {})
    ops = dict(config.get("ops") or {})
    for op in ops:
        if op.rsplit("__", 1)[-1] == "trained_model":
            train = dict(ops[op] or {})
            train["config"] = {**(train.get("config") or {}), "resume": "auto"}
            ops[op] = train
    if ops:
        config["ops"] = ops
    return config


def execute_resume(instance: dg.DagsterInstance, plan: ResumePlan) -> Any:
    """Load the stopped run's code, create the resume run and execute it in this process;
    returns Dagster's JobExecutionResult."""
    from dagster._utils.hosted_user_process import recon_job_from_origin

    run = plan.run
    origin = run.job_code_origin
    if origin is None:
        raise ResumeRefused(f"run {run.run_id} records no code origin to load its job from")
    job = recon_job_from_origin(origin)
    selection = sorted(run.asset_selection or (), key=lambda k: k.to_user_string())
    return dg.execute_job(
        job,
        instance,
        run_config=plan.run_config,
        tags=plan.tags,
        asset_selection=selection or None,
        op_selection=None if selection else run.op_selection,
    )
