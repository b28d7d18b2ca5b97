"""Run every benchmark in sequence (`make bench`), then regenerate docs/benchmarks.md.

    .venv/bin/python -m bench [--only NAME ...] [--skip NAME ...] [--results-dir DIR]
    .venv/bin/python -m bench --smoke        # `make bench-smoke`: tiny sizes, temp dir

Each benchmark runs in its own process (Ray sessions, torch thread settings and loggers do
not leak from one into the next) and saves one result file (`bench.results`). The page is
generated from the newest saved results (`bench.report`), never from printed output.

`--smoke` runs every benchmark at tiny sizes into a temporary results directory (so smoke
runs never become results), three side by side (`--jobs`), checks that each saved exactly
one well-formed result, and leaves the docs alone: it keeps the benchmark code from rotting,
its numbers are noise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.common import python
from bench.names import BENCHMARKS
from bench.results import load, results_dir

NAMES = tuple(name for name, _, _ in BENCHMARKS)
# Sizes that exercise every code path of a benchmark in seconds. The process-heavy ones
# (each run starts Ray) run one round: no interval then, which the result records as null.
SMOKE_ARGS = {
    "input_pipeline": ["--rounds", "2", "--num-samples", "512", "--train-steps", "2"]
    + ["--images", "20", "--min-s", "0.05"],
    "sensor_cost": ["--ticks", "2", "--sizes", "5", "--backends", "sqlite", "postgres"],
    "progress_overhead": ["--rounds", "2", "--steps", "3"],
    "training_overhead": ["--reps", "1", "--epochs", "2", "--num-samples", "256"],
    "ddp_scaling": ["--reps", "1", "--epochs", "2", "--num-samples", "256"],
    "startup": ["--reps", "1", "--epochs", "1"],
    "torchrun_compare": ["--reps", "1", "--epochs", "2"],
    "orchestration": ["--reps", "1", "--epochs", "1"],
    "step_checkpoint": ["--steps", "20", "--every", "5", "--trials", "2"],
    "storage_upload": ["--steps", "20", "--every", "5", "--trials", "2", "--resumes", "2"],
    "warm_start": ["--reps", "1", "--epochs", "1"],
    "sweep": ["--reps", "1", "--epochs", "2", "--trials", "3", "--num-samples", "256"],
    "sweep_trial": ["--reps", "1", "--epochs", "2", "--trials", "2", "--num-samples", "256"],
}


# Longest first, so that parallel smoke lanes finish together (seconds seen in smoke runs).
SMOKE_ORDER = ("startup", "torchrun_compare", "warm_start", "training_overhead", "ddp_scaling")
SMOKE_ORDER += ("sweep", "sweep_trial", "orchestration", "progress_overhead", "input_pipeline")
SMOKE_ORDER += ("sensor_cost",)
SMOKE_ORDER += ("step_checkpoint", "storage_upload")


def run_one(name: str, directory: Path, extra: list[str], capture: bool) -> str:
    """Run `python -m bench.<name>`; a problem ("" if none): a non-zero exit, or not exactly
    one new well-formed result file. Output passes through, or is printed at the end when
    `capture` (benchmarks running side by side)."""
    print(f"=== bench.{name} started ===", flush=True)
    before = set(directory.glob(f"{name}-*.json"))
    start = time.perf_counter()
    cmd = [python(), "-m", f"bench.{name}", "--results-dir", str(directory), *extra]
    if capture:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sys.stdout.write(f"--- output of bench.{name} ---\n{proc.stdout}")
        code = proc.returncode
    else:
        code = subprocess.call(cmd)
    saved = sorted(set(directory.glob(f"{name}-*.json")) - before)
    problem = ""
    if code != 0:
        problem = f"exit code {code}"
    elif len(saved) != 1:
        problem = f"saved {len(saved)} result files, expected 1"
    else:
        try:
            load(saved[0])
        except ValueError as err:
            problem = str(err)
    seconds = time.perf_counter() - start
    print(f"=== bench.{name}: {problem or 'ok'} in {seconds:.0f} s ===", flush=True)
    return problem


def run_all(names: list[str], directory: Path, smoke: bool, jobs: int = 1) -> list[str]:
    """Run the benchmarks, `jobs` at a time; the names of those with a problem."""
    from concurrent.futures import ThreadPoolExecutor

    def one(name: str) -> str:
        return run_one(name, directory, SMOKE_ARGS[name] if smoke else [], capture=jobs > 1)

    if jobs > 1:
        names = sorted(names, key=SMOKE_ORDER.index)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        problems = dict(zip(names, pool.map(one, names), strict=True))
    return [f"{name} ({problem})" for name, problem in problems.items() if problem]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    parser.add_argument("--skip", nargs="+", choices=NAMES, default=[])
    parser.add_argument("--results-dir", default=None, help="default: bench/results/")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, temporary results")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="benchmarks side by side (only with --smoke, whose numbers are noise anyway; "
        "default 3 there, 1 otherwise)",
    )
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs > 1 and not args.smoke:
        parser.error("--jobs > 1 only with --smoke: benchmarks side by side disturb each other")
    names = [n for n in NAMES if n in args.only and n not in args.skip]
    started = time.perf_counter()
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
            failed = run_all(names, Path(tmp), smoke=True, jobs=args.jobs or 3)
    else:
        directory = results_dir(args.results_dir)
        failed = run_all(names, directory, smoke=False)
        report.main(["--results-dir", str(directory)])
    print(
        f"\n{len(names) - len(failed)}/{len(names)} benchmarks ok in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
