"""Orchestration overhead of `make run`'s pipeline, per phase (issue 7, item 7).

Runs `dagster job execute -m tinyexp_dagster.definitions -j training_pipeline` (the default
config `make run` uses: digits, 5 epochs, 2 Ray workers x 1 CPU, embedded Redis) in a fresh
temporary DAGSTER_HOME and storage root, with a timing file. Phases come from the Dagster
event log (step start/success) and the timing marks; "useful" time is the time inside the
training loop (the `wall_time_s` that `trained_model` reports: its epoch loop, validation and
checkpoints included) and inside every `exp.evaluate()` (rank 0's scores of the best file
after its loop, and any scoring in a step's process: the `evaluate_start`/`evaluate_end`
timing marks).
Overhead = (wall time - useful time) / wall time, per run; the value is its geometric mean
over runs with a 95% interval. Warm (the default): every run on one storage root after an
untimed first run, as a second `make run` finds it (its embedded Redis and local Ray with
warm ranks running, the dataset prepared); target <= 0.40. `--cold`: each run on a fresh
storage root, as a first `make run` (no target). Per-phase seconds of every run are in the
raw results.

    .venv/bin/python -m bench.orchestration [--reps 4] [--epochs 5] [--cold]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench.common import (
    dagster_events,
    embedded_server,
    first_marks,
    settle_local_ray,
    spawn_timed,
    stop_local_ray,
)
from bench.names import (
    CODE_LOCATION,
    MODEL_EVALUATION,
    TRAINED_MODEL,
    TRAINED_MODEL_OP,
    TRAINING_JOB,
)
from bench.results import Run, add_results_arg
from bench.startup import DAGSTER, dagster_env, run_config
from bench.stats import value_against_target

WARM_TARGET = 0.40  # issue 24: a warm `make run` spends at most 40% outside the loops
# Inside the trained_model step: (label, mark that ends it), starting at STEP_START.
TRAINING = (
    ("input load, build experiment, Redis check/start", "launch_start"),
    ("Ray start", "ray_ready"),
    ("placement group", "placement_group_ready"),
    ("worker actors start", "actors_ready"),
    ("rank setup (imports torch), process group", "process_group_ready_rank0"),
    ("dataset load", "dataset_loaded_rank0"),
)


def pipeline_run(tmp: Path, rep: int, epochs: int, root: Path) -> dict[str, float]:
    """One `training_pipeline` run in its own home, on storage root `root`; times relative
    to spawn."""
    import dagster as dg

    home = tmp / f"home-{rep}"
    home.mkdir()
    env = dagster_env(tmp, tmp / f"timing-{rep}.txt")
    env["DAGSTER_HOME"] = str(home)
    env["TINYEXP_STORAGE_ROOT"] = str(root)
    config = tmp / f"config-{rep}.yaml"
    config.write_text(run_config(epochs))
    cmd = [DAGSTER, "job", "execute", "-m", CODE_LOCATION, "-c", str(config)]
    start, end, _ = spawn_timed([*cmd, "-j", TRAINING_JOB], env=env)
    times = {**dagster_events(home), **first_marks(tmp / f"timing-{rep}.txt")}
    out = {name: stamp - start for name, stamp in times.items()}
    out["exit"] = end - start
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        key = dg.AssetKey.from_user_string(TRAINED_MODEL)
        record = instance.fetch_materializations(key, limit=1).records[0]
        out["train_loop_s"] = float(record.asset_materialization.metadata["wall_time_s"].value)
    finally:
        instance.dispose()
    out["evaluations"] = evaluation_spans(tmp / f"timing-{rep}.txt", start)
    out["eval_loop_s"] = sum(end - begin for begin, end in out["evaluations"])
    return out


def evaluation_spans(timing: Path, start: float) -> list[tuple[float, float]]:
    """Every `exp.evaluate()` of the run, (start, end) relative to spawn: rank 0's after
    training (the gate's and model_evaluation's scores) and any in a step's process."""
    from tinyexp_core.timing import read_marks

    spans, begun = [], None
    for name, stamp, _ in read_marks(str(timing)):
        if name == "evaluate_start":
            begun = stamp
        elif name == "evaluate_end" and begun is not None:
            spans.append((begun - start, stamp - start))
            begun = None
    return spans


def _evaluating(r: dict, begin: float, finish: float) -> float:
    """Seconds of `exp.evaluate()` between `begin` and `finish` (relative to spawn)."""
    return sum(e - b for b, e in r["evaluations"] if begin <= b and e <= finish)


def phases(r: dict[str, float]) -> list[tuple[str, float, float]]:
    """(phase, seconds, useful seconds) in execution order, covering spawn to exit."""
    rows = [("Python, imports, definitions load", r["definitions_loaded"], 0.0)]
    prev_name, prev = "definitions load", r["definitions_loaded"]
    steps = sorted(
        (k.split(":", 1)[1] for k in r if k.startswith("STEP_START:")),
        key=lambda step: r[f"STEP_START:{step}"],
    )
    for step in steps:
        begin, finish = r[f"STEP_START:{step}"], r[f"STEP_SUCCESS:{step}"]
        rows.append((f"Dagster between {prev_name} and {step}", begin - prev, 0.0))
        if step == TRAINED_MODEL_OP:
            rows += training_phases(r)
        else:  # the gate and model_evaluation score here unless rank 0 did (cache hits)
            rows.append((f"step {step}", finish - begin, _evaluating(r, begin, finish)))
        prev_name, prev = step, finish
    rows.append(("Dagster run end, process exit", r["exit"] - prev, 0.0))
    return rows


def training_phases(r: dict[str, float]) -> list[tuple[str, float, float]]:
    rows = []
    prev = r[f"STEP_START:{TRAINED_MODEL_OP}"]
    for label, name in TRAINING:
        rows.append((f"trained_model: {label}", r[name] - prev, 0.0))
        prev = r[name]
    rows.append(
        ("trained_model: training loop (epochs, validation, checkpoints)", *[r["train_loop_s"]] * 2)
    )
    # rank 0 scores the best file on val and test after its loop (training/after.py)
    scoring = _evaluating(r, prev, r["launch_end"])
    rows.append(("trained_model: rank 0 scores the best file (val, test)", scoring, scoring))
    rest = r["launch_end"] - prev - r["train_loop_s"] - scoring
    rows.append(("trained_model: model/DDP setup, then Ray teardown", rest, 0.0))
    output_s = r[f"STEP_SUCCESS:{TRAINED_MODEL_OP}"] - r["launch_end"]
    rows.append(("trained_model: output, metadata", output_s, 0.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4, help="pipeline runs (>= 2)")
    parser.add_argument("--epochs", type=int, default=5, help="make run's default: 5")
    parser.add_argument("--cold", action="store_true", help="a fresh storage root per run")
    add_results_arg(parser)
    args = parser.parse_args(argv)

    bench_run = Run("orchestration", {k: v for k, v in vars(args).items() if k != "results_dir"})
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as name:
        tmp = Path(name)
        roots = [tmp / (f"root-{rep}" if args.cold else "root") for rep in range(args.reps)]
        try:
            if not args.cold:
                pipeline_run(tmp, -1, 1, roots[0])  # untimed: the first `make run`
            for rep in range(args.reps):
                if not args.cold:
                    settle_local_ray(roots[rep])  # its warm ranks refilled, untimed
                runs.append(pipeline_run(tmp, rep, args.epochs, roots[rep]))
                print(f"rep {rep}: wall {runs[-1]['exit']:.1f} s", flush=True)
        finally:
            for root in set(roots):
                stop_local_ray(root)
                embedded_server(root).stop()
    overheads = [(r["exit"] - r["train_loop_s"] - r["eval_loop_s"]) / r["exit"] for r in runs]
    comparison = value_against_target(
        f"7. {TRAINING_JOB}{' (cold)' if args.cold else ' (warm)'}: (wall - training and "
        "evaluation loops) / wall",
        overheads,
        target=None if args.cold else WARM_TARGET,
        direction="lower",
        unit="",
        what="share of the job's wall time outside the training loop and exp.evaluate()",
    )
    raw = {
        "wall_s": [r["exit"] for r in runs],
        "useful_s": [r["train_loop_s"] + r["eval_loop_s"] for r in runs],
        "phases": [
            [{"phase": p, "s": sec, "useful_s": use} for p, sec, use in phases(r)] for r in runs
        ],
    }
    notes = (
        f"`dagster job execute -j {TRAINING_JOB}` with `make run`'s defaults but "
        f"{args.epochs} epoch(s), each run in a fresh DAGSTER_HOME; "
        + (
            "each on a fresh storage root (so each starts its embedded Redis and its local "
            "Ray, as a first `make run` does). "
            if args.cold
            else "all on one storage root after an untimed first run (its embedded Redis and "
            "local Ray with warm ranks running, the dataset prepared, as a second `make run` "
            "finds them; the warm ranks refilled before each run). "
        )
        + "Useful "
        f"time: the training loop (`wall_time_s` of `{TRAINED_MODEL}`: epochs, validation, "
        "checkpoints) and every `exp.evaluate()`: rank 0's scores of the best file after "
        f"its loop and any scoring in a step (`{MODEL_EVALUATION}`, the gate). Per-phase "
        "seconds of every run (Dagster events and timing marks) are in the raw results."
    )
    bench_run.save(raw, [comparison], args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
