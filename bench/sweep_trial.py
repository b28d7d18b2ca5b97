"""A sweep trial on a warm Ray: its wall time over its training loop's (issue 24).

A trial runs the way `tinyexp-dagster sweep NAME run KEY` runs it: one process,
`python -m dagster job execute -m bench.sweep_trial_defs -j sweep_trial_training_pipeline
--tags '{"dagster/partition": KEY}'` (the pipeline's training assets for that partition:
`trained_model`, `model_checkpoint`, `model_evaluation`, and its checks), with the project's
default resources: the MNIST example on 2 Ray ranks x 1 CPU, Redis progress on the storage
root's embedded Redis (running, as after a first run), the root's local Ray warm (started
before, untimed, as `tinyexp-dagster ray up` or an earlier run leaves it) with its pool of
warm ranks refilled (`settle_local_ray`) before each trial. The sweep command itself (its
pool sensor, the leaderboard after the trials) is not timed: only the trial, what each
trial of a sweep costs.

Per trial: its wall time, process spawn to exit; its training loop, from rank 0's first
optimizer step (the `first_step_rank0` timing mark, `TINYEXP_TIMING_FILE`) to its last
epoch end (the run's last `epoch_end` progress event, its Redis stream id: after the
epoch's validation and checkpoint). The value is wall / loop per trial (geometric mean over
every trial of every round, with its 95% interval); target <= 1.5, lower is better. Each
round runs every trial once, in partition order.

    .venv/bin/python -m bench.sweep_trial [--reps 2] [--trials 3] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from bench.common import (
    embedded_server,
    first_marks,
    local_ray,
    python,
    run,
    settle_local_ray,
    spawn_timed,
    stop_local_ray,
)
from bench.results import Run, add_results_arg
from bench.startup import dagster_env
from bench.stats import value_against_target

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


def trial(tmp: Path, args: argparse.Namespace, key: str, tag: str, url: str) -> dict:
    """One trial, as the sweep command starts it; its wall time and training loop."""
    timing = tmp / f"timing-{tag}.txt"
    cmd = [python(), "-m", "dagster", "job", "execute", "-m", LOCATION, "-d", str(REPO_ROOT)]
    cmd += ["-j", f"{NAME}_training_pipeline", "--tags", json.dumps({"dagster/partition": key})]
    start, end, _ = spawn_timed(cmd, env=location_env(tmp, args, timing))
    # Here, not at the top: the trials' code location imports this module for its names,
    # and bench.torchrun_compare imports torch (~2.7 s a trial that a user would not pay).
    from bench.torchrun_compare import epoch_end_times, latest_run_id

    ends = epoch_end_times(url, latest_run_id(tmp / "dagster_home"))
    if len(ends) != args.epochs:
        raise RuntimeError(f"trial {key}: {len(ends)} epoch ends, expected {args.epochs}")
    first = first_marks(timing)["first_step_rank0"]
    return {
        "trial": key,
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
                for key in keys:
                    local_ray(tmp / "root", warm=True)
                    settle_local_ray(tmp / "root")
                    res = trial(tmp, args, key, f"{rep}-{len(trials)}", url)
                    trials.append(res)
                    print(f"rep {rep} trial {key}: wall {res['wall_s']:.1f} s, loop "
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
            what="per trial: process spawn to exit over rank 0's first step to the last epoch end",
        )
    ]
    notes = (
        f"{args.trials} trials of a learning-rate sweep of the MNIST example "
        f"({args.num_samples or 'the digits'} samples), {args.epochs} epochs each, one at a "
        "time, each a `dagster job execute` of the training job with its partition (as "
        "`tinyexp-dagster sweep NAME run KEY` starts it), 2 Ray ranks x 1 CPU on the storage "
        "root's warm local Ray, Redis progress. Each trial's wall, first step and epoch ends "
        "(seconds from spawn) are in the raw results."
    )
    bench_run.save({"trials": trials}, comparisons, args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
