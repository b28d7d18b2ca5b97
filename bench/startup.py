"""Startup: process start to first training step, `retrain_job` vs Ray Train (issue 7, item 3).

Ours: `dagster job execute -m tinyexp_dagster.definitions -j retrain_job` (1 epoch, the
default 2 Ray workers x 1 CPU, embedded Redis progress) in a fresh temporary DAGSTER_HOME
whose `prepared_dataset` (the default digits) was materialized first, with the embedded Redis
already running, as it is after the first run. Theirs: `bench/torchtrainer_startup.py`, a Ray
Train `TorchTrainer` script training the same network on the same prepared tensors with 2
workers. "Process start" is a timestamp taken right before each subprocess is spawned; both
sides write timing marks (`TINYEXP_TIMING_FILE`), so the time is split into phases. Runs
alternate (ours, theirs, theirs, ours, ...). Target: ratio <= 1.0, aiming at <= 0.7.

    .venv/bin/python -m bench.startup [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    dagster_events,
    first_marks,
    load_average,
    markdown_table,
    python,
    report_result,
    run,
    spawn_timed,
    verdict,
    write_section,
)

TARGET, AIM = 1.0, 0.7
DAGSTER = str(Path(sys.executable).with_name("dagster"))
RUN_CONFIG = 'ops:\n  trained_model:\n    config:\n      overrides: ["train_cfg.num_epochs=1"]\n'

# (phase label, mark that ends it); each phase starts where the previous one ended.
OURS = (
    ("Python, imports (dagster, project), definitions load", "definitions_loaded"),
    ("Dagster run: instance, run record, step start", "STEP_START:trained_model"),
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
    from tinyexp_core.redis_server import EmbeddedRedis

    (tmp / "dagster_home").mkdir()
    cmd = [DAGSTER, "asset", "materialize", "-m", "tinyexp_dagster.definitions"]
    run([*cmd, "--select", "prepared_dataset"], env=dagster_env(tmp))
    EmbeddedRedis(tmp / "root").ensure()
    (manifest,) = (tmp / "root" / "datasets").glob("*/*/manifest.json")
    return str(manifest.parent)


def ours(tmp: Path, rep: int) -> dict[str, float]:
    timing = tmp / f"ours-{rep}.txt"
    config = tmp / "retrain.yaml"
    config.write_text(RUN_CONFIG)
    cmd = [
        DAGSTER,
        "job",
        "execute",
        "-m",
        "tinyexp_dagster.definitions",
        "-j",
        "mnist_retrain_job",
    ]
    start, end, _ = spawn_timed([*cmd, "-c", str(config)], env=dagster_env(tmp, timing))
    marks = {**dagster_events(tmp / "dagster_home"), **first_marks(timing)}
    return relative(marks, start, end)


def theirs(tmp: Path, rep: int, prepared: str) -> dict[str, float]:
    timing = tmp / f"theirs-{rep}.txt"
    cmd = [python(), "-m", "bench.torchtrainer_startup", "--data", prepared]
    cmd += ["--timing-file", str(timing), "--storage", str(tmp / "ray_train")]
    start, end, _ = spawn_timed(cmd, env={"RAY_USAGE_STATS_ENABLED": "0"})
    return relative(first_marks(timing), start, end)


def relative(marks: dict[str, float], start: float, end: float) -> dict[str, float]:
    """Seconds since process start per mark; `pg_rank0` is rank 0's process-group mark."""
    out = {name: stamp - start for name, stamp in marks.items()}
    out["pg_rank0"] = out.get("process_group_ready_rank0", float("nan"))
    out["exit"] = end - start
    return out


def phase_rows(
    phases: Sequence[tuple[str, str]], runs: list[dict[str, float]]
) -> list[list[object]]:
    rows: list[list[object]] = []
    for index, (label, name) in enumerate(phases):
        prev = phases[index - 1][1] if index else None
        durations = [r[name] - (r[prev] if prev else 0.0) for r in runs]
        rows.append([label, f"{statistics.median(durations):.2f}"])
    total = statistics.median(r["first_step_rank0"] for r in runs)
    rows.append(["**process start to first step**", f"**{total:.2f}**"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="pairs of runs")
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)

    from tinyexp_core.redis_server import EmbeddedRedis

    started, load_before = time.perf_counter(), load_average()
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "theirs": []}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as name:
        tmp = Path(name)
        try:
            prepared = setup(tmp)
            for rep in range(args.reps):
                for side in ("ours", "theirs") if rep % 2 == 0 else ("theirs", "ours"):
                    res = ours(tmp, rep) if side == "ours" else theirs(tmp, rep, prepared)
                    runs[side].append(res)
                    print(
                        f"rep {rep} {side}: first step at {res['first_step_rank0']:.2f} s, "
                        f"exit at {res['exit']:.2f} s",
                        flush=True,
                    )
        finally:
            EmbeddedRedis(tmp / "root").stop()
    firsts = {side: [r["first_step_rank0"] for r in rs] for side, rs in runs.items()}
    ratios = [o / t for o, t in zip(firsts["ours"], firsts["theirs"], strict=True)]
    ratio = statistics.median(ratios)
    pairs = [
        [rep + 1, f"{o:.2f}", f"{t:.2f}", f"{o / t:.3f}"]
        for rep, (o, t) in enumerate(zip(firsts["ours"], firsts["theirs"], strict=True))
    ]
    pairs.append(
        [
            "median",
            f"{statistics.median(firsts['ours']):.2f}",
            f"{statistics.median(firsts['theirs']):.2f}",
            f"**{ratio:.3f}**",
        ]
    )
    met = verdict(ratio, TARGET, higher_is_better=False)
    aim = "reached" if ratio <= AIM else "not reached"
    body = (
        markdown_table(["pair", "retrain_job s", "TorchTrainer s", "ratio"], pairs)
        + "\n\nWhere the time goes (median seconds per phase; each phase ends at a timing mark, "
        "rank 0's where ranks differ):\n\n**`dagster job execute -j retrain_job`**\n\n"
        + markdown_table(["phase", "s"], phase_rows(OURS, runs["ours"]))
        + "\n\n**Ray Train `TorchTrainer` script**\n\n"
        + markdown_table(["phase", "s"], phase_rows(THEIRS, runs["theirs"]))
        + "\n\nSeconds from a timestamp taken right before the subprocess is spawned to rank 0's "
        "first optimizer step. Both sides: the MNIST example's network on the same prepared "
        "digits tensors, 2 workers x 1 CPU, 1 torch thread, batch 32 per rank, a local Ray "
        "started by the process with the same `ray.init` options. Ours runs the whole job "
        "(`retrain_job`: train 1 epoch, promote, evaluate; median exit "
        f"{statistics.median(r['exit'] for r in runs['ours']):.1f} s); theirs trains 1 epoch "
        f"(median exit {statistics.median(r['exit'] for r in runs['theirs']):.1f} s). Pairs "
        "alternate which side runs first.\n\n"
        f"Ratio {ratio:.3f}, target <= {TARGET}: {met}; aim <= {AIM}: {aim}. "
        f"Load average before / after: {load_before} / {load_average()}. "
        f"Benchmark wall time: {time.perf_counter() - started:.0f} s."
    )
    report_result(
        "3. Startup to first step: retrain_job / TorchTrainer",
        f"{ratio:.3f}",
        f"<= {TARGET} (aim <= {AIM})",
        f"{met}; aim {aim}",
    )
    command = f".venv/bin/python -m bench.startup --reps {args.reps}"
    if args.no_write:
        print(body)
    else:
        write_section("startup", "3. Startup: retrain_job vs Ray Train", body, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
