"""Startup: process start to first training step, `retrain_job` vs Ray Train (issue 7, item 3).

Ours: `dagster job execute -m tinyexp_dagster.definitions -j retrain_job` (1 epoch, the
default 2 Ray workers x 1 CPU, embedded Redis progress) in a fresh temporary DAGSTER_HOME
whose `prepared_dataset` (the default digits) was materialized first, with the embedded Redis
already running, as it is after the first run. Theirs: `bench/torchtrainer_startup.py`, a Ray
Train `TorchTrainer` script training the same network on the same prepared tensors with 2
workers. "Process start" is a timestamp taken right before each subprocess is spawned; both
sides write timing marks (`TINYEXP_TIMING_FILE`), so the time is split into phases. A
round runs ours and theirs twice (the second TorchTrainer run is the A/A control), in an
order that rotates every round; a pair is a round. Targets: ratio <= 1.0 (issue 7) and the
cold start <= 0.6 (issue 14), each with its 95% interval.

    .venv/bin/python -m bench.startup [--reps 6] [--epochs 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    dagster_events,
    embedded_server,
    first_marks,
    local_ray,
    python,
    run,
    spawn_timed,
    stop_local_ray,
    turn_order,
)
from bench.names import CODE_LOCATION, PREPARED_DATASET, RETRAIN_JOB, TRAINED_MODEL_OP
from bench.results import Run, add_results_arg
from bench.stats import compare

TARGET, COLD_TARGET = 1.0, 0.6
SIDES = ("ours", "theirs", "theirs2")
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def run_config(epochs: int) -> str:
    """The retrain job's run config: only the epoch count differs from the defaults."""
    overrides = f'["train_cfg.num_epochs={epochs}"]'
    return f"ops:\n  {TRAINED_MODEL_OP}:\n    config:\n      overrides: {overrides}\n"


# (phase label, mark that ends it); each phase starts where the previous one ended.
OURS = (
    ("Python, imports (dagster, project), definitions load", "definitions_loaded"),
    ("Dagster run: instance, run record, step start", f"STEP_START:{TRAINED_MODEL_OP}"),
    ("step: input load, build experiment (imports torch), Redis check", "launch_start"),
    ("Ray start (`import ray`, `ray.init`, local)", "ray_ready"),
    ("placement group", "placement_group_ready"),
    ("worker actors start", "actors_ready"),
    ("rank setup: unpickle experiment (imports torch), logger, process group", "pg_rank0"),
    ("dataset load (train + val tensors)", "dataset_loaded_rank0"),
    ("model, DDP wrap, first step", "first_step_rank0"),
)
THEIRS = (
    ("Python, imports (torch, ray.train)", "imports_done"),
    ("Ray start (`ray.init`, local)", "ray_ready"),
    ("TorchTrainer setup", "fit_start"),
    ("`fit()`: controller, placement group, worker actors, process group", "pg_rank0"),
    ("dataset load (train + val tensors)", "dataset_loaded_rank0"),
    ("model, DDP wrap, first step", "first_step_rank0"),
)


def dagster_env(tmp: Path, timing_file: Path | None = None) -> dict[str, str]:
    """The environment of a `dagster` command on this benchmark's private home and root."""
    env = {
        "DAGSTER_HOME": str(tmp / "dagster_home"),
        "TINYEXP_STORAGE_ROOT": str(tmp / "root"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if timing_file is not None:
        env["TINYEXP_TIMING_FILE"] = str(timing_file)
    return env


def setup(tmp: Path) -> str:
    """Materialize prepared_dataset and start the embedded Redis; returns the dataset path."""
    (tmp / "dagster_home").mkdir()
    cmd = [DAGSTER, "asset", "materialize", "-m", CODE_LOCATION]
    run([*cmd, "--select", PREPARED_DATASET], env=dagster_env(tmp))
    embedded_server(tmp / "root").ensure()
    (manifest,) = (tmp / "root" / "datasets").glob("*/*/manifest.json")
    return str(manifest.parent)


def ours(tmp: Path, rep: int, epochs: int) -> dict[str, float]:
    timing = tmp / f"ours-{rep}.txt"
    config = tmp / "retrain.yaml"
    config.write_text(run_config(epochs))
    cmd = [DAGSTER, "job", "execute", "-m", CODE_LOCATION, "-j", RETRAIN_JOB]
    start, end, _ = spawn_timed([*cmd, "-c", str(config)], env=dagster_env(tmp, timing))
    marks = {**dagster_events(tmp / "dagster_home"), **first_marks(timing)}
    return relative(marks, start, end)


def theirs(
    tmp: Path, name: str, prepared: str, epochs: int, address: str = "local"
) -> dict[str, float]:
    """One Ray Train run: on its own new Ray (`address="local"`) or a running one."""
    timing = tmp / f"{name}.txt"
    cmd = [python(), "-m", "bench.torchtrainer_startup", "--data", prepared]
    cmd += ["--epochs", str(epochs), "--address", address]
    cmd += ["--timing-file", str(timing), "--storage", str(tmp / "ray_train")]
    start, end, _ = spawn_timed(cmd, env={"RAY_USAGE_STATS_ENABLED": "0"})
    return relative(first_marks(timing), start, end)


def relative(marks: dict[str, float], start: float, end: float) -> dict[str, float]:
    """Seconds since process start per mark; `pg_rank0` is rank 0's process-group mark."""
    out = {name: stamp - start for name, stamp in marks.items()}
    out["pg_rank0"] = out.get("process_group_ready_rank0", float("nan"))
    out["exit"] = end - start
    return out


def phases(spec: Sequence[tuple[str, str]], runs: list[dict[str, float]]) -> dict[str, list]:
    """Seconds per phase and run; each phase ends at its mark, starts at the previous one."""
    out: dict[str, list[float]] = {}
    for index, (label, name) in enumerate(spec):
        prev = spec[index - 1][1] if index else None
        out[label] = [r[name] - (r[prev] if prev else 0.0) for r in runs]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6, help="rounds (>= 2 for an interval)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs each side trains")
    add_results_arg(parser)
    args = parser.parse_args(argv)

    bench_run = Run("startup", {k: v for k, v in vars(args).items() if k != "results_dir"})
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as name:
        tmp = Path(name)
        try:
            prepared = setup(tmp)
            for rep in range(args.reps):
                for side in turn_order(SIDES, rep):
                    if side == "ours":
                        # This item is the cold start: the run starts the root's Ray.
                        local_ray(tmp / "root", warm=False)
                        res = ours(tmp, rep, args.epochs)
                    else:
                        stop_local_ray(tmp / "root")  # no Ray left warm by ours runs beside
                        res = theirs(tmp, f"{side}-{rep}", prepared, args.epochs)
                    runs[side].append(res)
                    print(
                        f"rep {rep} {side}: first step at {res['first_step_rank0']:.2f} s, "
                        f"exit at {res['exit']:.2f} s",
                        flush=True,
                    )
        finally:
            stop_local_ray(tmp / "root")
            embedded_server(tmp / "root").stop()
    first = {side: [r["first_step_rank0"] for r in rs] for side, rs in runs.items()}
    control = (first["theirs2"], first["theirs"])
    comparisons = [
        compare(
            f"3. first step, {RETRAIN_JOB} / Ray Train TorchTrainer ({label})",
            first["ours"],
            first["theirs"],
            target=target,
            direction="lower",
            control=control,
            what="seconds from process spawn to rank 0's first optimizer step",
        )
        for target, label in ((TARGET, "issue 7"), (COLD_TARGET, "cold-start goal, issue 14"))
    ]
    raw = {
        "first_step_s": first,
        "exit_s": {side: [r["exit"] for r in rs] for side, rs in runs.items()},
        "phases_s": {
            "ours": phases(OURS, runs["ours"]),
            "theirs": phases(THEIRS, runs["theirs"] + runs["theirs2"]),
        },
    }
    notes = (
        "Seconds from a timestamp taken right before the subprocess is spawned to rank 0's "
        "first optimizer step. Both sides: the MNIST example's network on the same prepared "
        "digits tensors, 2 workers x 1 CPU, 1 torch thread, batch 32 per rank, a local Ray "
        f"started by the process with the same `ray.init` options, {args.epochs} epoch(s). "
        f"Ours runs the whole job (`{RETRAIN_JOB}`: train, promote, evaluate); theirs trains. "
        "The seconds of every phase (each ends at a timing mark, rank 0's where ranks differ) "
        "and every run's exit time are in the raw results."
    )
    bench_run.save(raw, comparisons, args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
