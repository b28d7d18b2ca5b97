"""Run every benchmark in sequence (`make bench`); each updates its docs/benchmarks.md section.

    .venv/bin/python -m bench [--only NAME ...] [--skip NAME ...]

Each benchmark runs in its own process (Ray sessions, torch thread settings and loggers do
not leak from one into the next). At the end, the summary section of docs/benchmarks.md is
rewritten from the headline results the benchmarks just printed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

from bench.common import DOC, load_average, markdown_table, python, write_section

# In the order they run: the cheap and quiet first, the ones that start Ray after.
BENCHMARKS = (
    "input_pipeline",
    "sensor_cost",
    "progress_overhead",
    "training_overhead",
    "ddp_scaling",
    "startup",
    "orchestration",
)
RESULT_PREFIX = "BENCH_RESULT "


def run_one(name: str) -> tuple[int, list[dict], float]:
    """Run `python -m bench.<name>`, echoing its output; its exit code, results and seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [python(), "-m", f"bench.{name}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    results = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.startswith(RESULT_PREFIX):
            results.append(json.loads(line[len(RESULT_PREFIX) :]))
    return proc.wait(), results, time.perf_counter() - start


def progress_result() -> list[dict]:
    """progress_overhead prints no result line: read its verdict from its docs section."""
    text = DOC.read_text() if DOC.exists() else ""
    share = re.search(r"reporter itself takes ([\d.]+%) of a step .*?, (met|missed)", text)
    ratio = re.search(r"ratio on/off ([\d.]+) in wall time \(A/A ([\d.]+)\)", text)
    if not share:
        return []
    value = f"reporter {share.group(1)} of a step"
    if ratio:
        value += f"; end to end {ratio.group(1)} (A/A {ratio.group(2)})"
    item = "5. Progress overhead: step time, progress on / off"
    return [{"item": item, "value": value, "target": "<= 1.01", "verdict": share.group(2)}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[])
    args = parser.parse_args(argv)

    started, load_before = time.perf_counter(), load_average()
    rows, failed = [], []
    for name in (n for n in BENCHMARKS if n in args.only and n not in args.skip):
        print(f"\n=== bench.{name} ===", flush=True)
        code, results, seconds = run_one(name)
        if code != 0:
            failed.append(name)
            rows.append([f"`bench.{name}`", "failed", "-", f"exit code {code}", f"{seconds:.0f}"])
            continue
        if name == "progress_overhead":
            results = progress_result()
        for res in results:
            row = [res["item"], f"**{res['value']}**", res["target"], res["verdict"]]
            rows.append([*row, f"{seconds:.0f}"])
    total = time.perf_counter() - started
    body = (
        markdown_table(["item", "ratio / value", "target", "verdict", "benchmark s"], rows)
        + f"\n\nTotal `make bench` time: {total / 60:.1f} min. Load average before / after: "
        f"{load_before} / {load_average()}. Details, tables and commands in the sections below."
    )
    if set(args.only) == set(BENCHMARKS) and not args.skip:  # a partial run keeps the summary
        write_section("summary", "Summary of the last `make bench`", body, "make bench")
    else:
        print(body)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
