"""Orchestration overhead of `make run`'s pipeline, per phase (issue 7, item 7).

Runs `dagster job execute -m tinyexp_dagster.definitions -j training_pipeline` (the default
config `make run` uses: digits, 5 epochs, 2 Ray workers x 1 CPU, embedded Redis) in a fresh
temporary DAGSTER_HOME and storage root, with a timing file. Phases come from the Dagster
event log (step start/success) and the timing marks; "useful" time is the time inside the
training loop (the `wall_time_s` that `trained_model` reports: its epoch loop, validation and
checkpoints included) and inside the evaluation (`exp.evaluate()` in `model_evaluation`).
Overhead = (wall time - useful time) / wall time, overall and per phase.

    .venv/bin/python -m bench.orchestration [--reps 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    dagster_events,
    first_marks,
    load_average,
    markdown_table,
    report_result,
    spawn_timed,
    write_section,
)
from bench.startup import DAGSTER, dagster_env

# Inside the trained_model step: (label, mark that ends it), starting at STEP_START.
TRAINING = (
    ("input load, build experiment, Redis check/start", "launch_start"),
    ("Ray start", "ray_ready"),
    ("placement group", "placement_group_ready"),
    ("worker actors start", "actors_ready"),
    ("rank setup (imports torch), process group", "process_group_ready_rank0"),
    ("dataset load", "dataset_loaded_rank0"),
)


def pipeline_run(tmp: Path, rep: int) -> dict[str, float]:
    """One `training_pipeline` run in its own home and root; times relative to spawn."""
    import dagster as dg

    home = tmp / f"home-{rep}"
    home.mkdir()
    env = dagster_env(tmp, tmp / f"timing-{rep}.txt")
    env["DAGSTER_HOME"] = str(home)
    env["TINYEXP_STORAGE_ROOT"] = str(tmp / f"root-{rep}")
    cmd = [DAGSTER, "job", "execute", "-m", "tinyexp_dagster.definitions"]
    start, end, _ = spawn_timed([*cmd, "-j", "mnist_training_pipeline"], env=env)
    times = {**dagster_events(home), **first_marks(tmp / f"timing-{rep}.txt")}
    out = {name: stamp - start for name, stamp in times.items()}
    out["exit"] = end - start
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        record = instance.fetch_materializations(dg.AssetKey("trained_model"), limit=1).records[0]
        out["train_loop_s"] = float(record.asset_materialization.metadata["wall_time_s"].value)
    finally:
        instance.dispose()
    out["eval_loop_s"] = out["evaluate_end"] - out["evaluate_start"]
    return out


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
        if step == "trained_model":
            rows += training_phases(r)
        elif step == "model_evaluation":
            rows.append((f"step {step}", finish - begin, r["eval_loop_s"]))
        else:
            rows.append((f"step {step}", finish - begin, 0.0))
        prev_name, prev = step, finish
    rows.append(("Dagster run end, process exit", r["exit"] - prev, 0.0))
    return rows


def training_phases(r: dict[str, float]) -> list[tuple[str, float, float]]:
    rows = []
    prev = r["STEP_START:trained_model"]
    for label, name in TRAINING:
        rows.append((f"trained_model: {label}", r[name] - prev, 0.0))
        prev = r[name]
    rows.append(
        ("trained_model: training loop (epochs, validation, checkpoints)", *[r["train_loop_s"]] * 2)
    )
    rest = r["launch_end"] - prev - r["train_loop_s"]
    rows.append(("trained_model: model/DDP setup, then Ray teardown", rest, 0.0))
    rows.append(
        ("trained_model: output, metadata", r["STEP_SUCCESS:trained_model"] - r["launch_end"], 0.0)
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="pipeline runs")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)

    from tinyexp_core.redis_server import EmbeddedRedis

    started, load_before = time.perf_counter(), load_average()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as name:
        tmp = Path(name)
        try:
            for rep in range(args.reps):
                runs.append(pipeline_run(tmp, rep))
                print(f"rep {rep}: wall {runs[-1]['exit']:.1f} s", flush=True)
        finally:
            for rep in range(args.reps):
                EmbeddedRedis(tmp / f"root-{rep}").stop()
    per_run = [phases(r) for r in runs]
    rows = []
    for index, (label, _, _) in enumerate(per_run[0]):
        seconds = statistics.median(p[index][1] for p in per_run)
        useful = statistics.median(p[index][2] for p in per_run)
        wall = statistics.median(r["exit"] for r in runs)
        rows.append(
            [label, f"{seconds:.2f}", f"{useful:.2f}", f"{100 * (seconds - useful) / wall:.1f}%"]
        )
    overheads = [(r["exit"] - r["train_loop_s"] - r["eval_loop_s"]) / r["exit"] for r in runs]
    wall = statistics.median(r["exit"] for r in runs)
    useful = statistics.median(r["train_loop_s"] + r["eval_loop_s"] for r in runs)
    overhead = statistics.median(overheads)
    rows.append(["**total**", f"**{wall:.2f}**", f"**{useful:.2f}**", f"**{100 * overhead:.1f}%**"])
    body = (
        markdown_table(["phase", "s", "useful s", "overhead, share of wall"], rows)
        + "\n\n"
        + f"`dagster job execute -j training_pipeline` with `make run`'s defaults, median of "
        f"{args.reps} runs, each in a fresh DAGSTER_HOME and storage root (so each starts "
        "its embedded Redis, as a first `make run` does). Useful time: the training loop "
        "(`wall_time_s` of `trained_model`) and `exp.evaluate()` in `model_evaluation`. "
        f"Overhead = (wall - useful) / wall: **{100 * overhead:.1f}%** "
        f"(useful {useful:.1f} s of {wall:.1f} s). What was tried to cut it, and why the "
        "rest stays, is in the notes at the end of this page.\n\n"
        f"Load average before / after: {load_before} / {load_average()}. "
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s."
    )
    report_result(
        "7. Orchestration overhead of make run: (wall - loops) / wall",
        f"{100 * overhead:.1f}%",
        "cut where large",
        "see section 7",
    )
    command = f".venv/bin/python -m bench.orchestration --reps {args.reps}"
    if args.no_write:
        print(body)
    else:
        write_section("orchestration", "7. Orchestration overhead of make run", body, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
