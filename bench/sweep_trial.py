"""A sweep trial on a warm Ray: its wall time over its training loop's (issue 24).

A trial runs the way `tinyexp-dagster sweep NAME run KEY...` runs it: handed to a trial
worker (`tinyexp_dagster.sweep.worker_pool`, the command's own code), a long-lived process
that loaded the code location `bench.sweep_trial_defs` and joined Ray once and runs the
pipeline's training job `sweep_trial_training_pipeline` for the trial's partition
(`trained_model`, `model_checkpoint`, `model_evaluation`, and its checks) with the trial's
tags, one trial after another. Each round starts one worker with its first trial (as `sweep
run` starts one per `max_concurrent`, here 1) and stops it after its last: the first trial
of a round includes the worker's start (Python, `import dagster`, loading the location,
joining Ray), the next ones reuse it. The project's default resources: the MNIST example on
2 Ray ranks x 1 CPU, Redis progress on the storage root's embedded Redis (running, as after
a first run), the root's local Ray warm (started before, untimed, as `tinyexp-dagster ray
up` or an earlier run leaves it) with its pool of warm ranks refilled (`settle_local_ray`,
untimed) before each trial. The sweep command itself (its pool sensor, the leaderboard
after the trials) is not timed: only the trial, what each trial of a sweep costs.

Per trial: its wall time, from the moment it is handed to the worker to the moment its
result comes back from it; its training loop, from rank 0's first optimizer step (the
`first_step_rank0` timing mark, `TINYEXP_TIMING_FILE`) to its last epoch end (the run's last
`epoch_end` progress event, its Redis stream id: after the epoch's validation and
checkpoint). The value is wall / loop per trial (geometric mean over every trial of every
round, with its 95% interval); target <= 1.5, lower is better. Each round runs every trial
once, in partition order.

    .venv/bin/python -m bench.sweep_trial [--reps 2] [--trials 3] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    embedded_server,
    local_ray,
    python,
    run,
    settle_local_ray,
    stop_local_ray,
)
from bench.results import Run, add_results_arg
from bench.startup import dagster_env
from bench.stats import value_against_target
from tinyexp_dagster.sweep.worker_pool import Trial, WorkerPool

TARGET = 1.5
LOCATION = "bench.sweep_trial_defs"  # the code location the trials run from
NAME = "sweep_trial"  # its pipeline
LEARNING_RATES = (0.003, 0.001, 0.01, 0.03)  # its sweep: one trial each
ENV_EPOCHS, ENV_SAMPLES = "BENCH_SWEEP_TRIAL_EPOCHS", "BENCH_SWEEP_TRIAL_SAMPLES"
REPO_ROOT = Path(__file__).resolve().parent.parent


def location_env(tmp: Path, args: argparse.Namespace, timing: Path | None = None) -> dict:
    """A `dagster` command's environment: this benchmark's home and root, the trials' size,
    the repository on the import path (the location is a module under bench/)."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**dagster_env(tmp, timing), "PYTHONPATH": path}
    return {**env, ENV_EPOCHS: str(args.epochs), ENV_SAMPLES: str(args.num_samples)}


def trial_keys(tmp: Path, args: argparse.Namespace) -> list[str]:
    """The sweep's partition keys (its trials), from the code location itself."""
    code = (
        "import dagster as dg, json; from bench.sweep_trial_defs import NAME, defs; "
        "key = dg.AssetKey([NAME, 'trained_model']); "
        "print(json.dumps(defs.get_assets_def(key).partitions_def.get_partition_keys()))"
    )
    out = run([python(), "-c", code], env=location_env(tmp, args))
    return json.loads(out.strip().splitlines()[-1])


def setup(tmp: Path, args: argparse.Namespace) -> None:
    """Prepare the dataset (`sweep_trial/prepared_dataset`), start the embedded Redis."""
    (tmp / "dagster_home").mkdir()
    cmd = [python(), "-m", "dagster", "asset", "materialize", "-m", LOCATION]
    run([*cmd, "--select", f"{NAME}/prepared_dataset"], env=location_env(tmp, args))
    embedded_server(tmp / "root").ensure()


def one_round(tmp: Path, args: argparse.Namespace, keys: list[str], rep: int, url: str) -> list:
    """Every trial once, in one worker started with the first (`sweep run`'s own code)."""
    from tinyexp_dagster.cli_location import CodeLocation
    from tinyexp_dagster.sweep.trials import RUN_TAG
    from tinyexp_dagster.sweep.worker_pool import WorkerPool

    timing = tmp / f"timing-{rep}.txt"
    env = {**os.environ, **location_env(tmp, args, timing)}
    location = CodeLocation("-m", module_name=LOCATION, working_directory=str(REPO_ROOT))
    pool = WorkerPool(location, f"{NAME}_training_pipeline", tmp / "logs", 1, env)
    results = []
    try:
        for key in keys:
            local_ray(tmp / "root", warm=True)
            settle_local_ray(tmp / "root")
            tags = {"dagster/partition": key, RUN_TAG: f"bench-{rep}"}
            results.append(run_trial(pool, Trial(key, tags, tmp / "logs" / f"{rep}-{key}.log")))
            results[-1].update(measure(results[-1], timing, url, args.epochs))
    finally:
        pool.stop()
    return results


def run_trial(pool: WorkerPool, trial: Trial) -> dict:
    """Hand the trial to the (idle or new) worker and wait for its result."""
    (worker,) = pool.idle(1)
    worker.give(trial)
    done: list = []
    while not done:
        done = pool.finished(timeout_s=1.0)
    returned = time.time()
    _, _, result = done[0]
    if result is None or result["status"] != "SUCCESS":
        tail = trial.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"trial {trial.key}: {result or 'its worker died'}\n{tail}")
    return {"trial": trial.key, "run_id": result["run_id"], "handed": trial.handed,
            "returned": returned}  # fmt: skip


def measure(res: dict, timing: Path, url: str, epochs: int) -> dict:
    """A trial's wall time (handed to returned), first step and training loop."""
    # Here, not at the top: the trials' code location imports this module for its names,
    # and bench.torchrun_compare imports torch (~2.7 s a trial that a user would not pay).
    from bench.torchrun_compare import epoch_end_times
    from tinyexp_core.timing import read_marks

    start, end = res["handed"], res["returned"]
    ends = epoch_end_times(url, res["run_id"])
    if len(ends) != epochs:
        raise RuntimeError(f"trial {res['trial']}: {len(ends)} epoch ends, expected {epochs}")
    # One timing file per round: this trial's first step is the first one in its window.
    marks = [t for name, t, _ in read_marks(str(timing)) if name == "first_step_rank0"]
    within = [t for t in marks if start <= t <= end]
    if not within:
        raise RuntimeError(f"trial {res['trial']}: no first_step_rank0 mark in {timing}")
    first = min(within)
    return {
        "wall_s": end - start,
        "first_step_s": first - start,
        "loop_s": ends[-1] - first,
        "epoch_ends_s": [t - start for t in ends],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="rounds of every trial")
    parser.add_argument("--trials", type=int, default=3, help=f"<= {len(LEARNING_RATES)}")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per trial")
    parser.add_argument("--num-samples", type=int, default=0, help="synthetic; 0: digits")
    add_results_arg(parser)
    args = parser.parse_args(argv)
    bench_run = Run("sweep_trial", {k: v for k, v in vars(args).items() if k != "results_dir"})
    trials: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-trial-") as name:
        tmp = Path(name)
        server = embedded_server(tmp / "root")
        try:
            setup(tmp, args)
            url = server.ensure()
            keys = trial_keys(tmp, args)[: args.trials]
            for rep in range(args.reps):
                for res in one_round(tmp, args, keys, rep, url):
                    trials.append(res)
                    print(f"rep {rep} trial {res['trial']}: wall {res['wall_s']:.1f} s, loop "
                          f"{res['loop_s']:.1f} s, first step at {res['first_step_s']:.1f} s, "
                          f"ratio {res['wall_s'] / res['loop_s']:.2f}", flush=True)  # fmt: skip
        finally:
            stop_local_ray(tmp / "root")
            server.stop()
    comparisons = [
        value_against_target(
            "14. sweep trial on a warm Ray, trial wall time / its training loop",
            [t["wall_s"] / t["loop_s"] for t in trials],
            target=TARGET,
            direction="lower",
            unit="ratio",
            what="per trial: handed to its worker to its result back, over rank 0's first "
            "step to the last epoch end (a round's first trial includes the worker's start)",
        )
    ]
    notes = (
        f"{args.trials} trials of a learning-rate sweep of the MNIST example "
        f"({args.num_samples or 'the digits'} samples), {args.epochs} epochs each, one at a "
        "time, each a run of the training job with its partition in a trial worker (as "
        "`tinyexp-dagster sweep NAME run` runs it: one worker per round, started with its "
        "first trial, which pays the worker's start), 2 Ray ranks x 1 CPU on the storage "
        "root's warm local Ray, Redis progress. Each trial's wall, first step and epoch ends "
        "(seconds from being handed to the worker) are in the raw results."
    )
    bench_run.save({"trials": trials}, comparisons, args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
