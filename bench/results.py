"""Saved benchmark results: one JSON file per run, `<dir>/<name>-<UTC timestamp>.json`.

A file holds what the run measured and under which conditions: the machine, the load
average and CPU-speed probes (`bench.common.cpu_probe`, `cpu_sustained`) before and after,
the command, the sizes, the raw per-repetition numbers, and the computed comparisons
(ratio, 95% interval, A/A control, verdict; see `bench.stats`).
Each file also records the commit it measured and whether the tree was clean (`provenance`).
`docs/benchmarks.md` is generated from the newest file of each benchmark (`bench.report`),
with the count and verdicts of all of them.

The directory is `bench/results/` unless `--results-dir` or `$TINYEXP_BENCH_RESULTS` says
otherwise (`make bench-smoke` writes to a temporary one, so smoke runs never become
results).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.common import cpu_probe, cpu_sustained, load_average, machine
from bench.stats import VERDICTS

DEFAULT_DIR = Path(__file__).resolve().parent / "results"
ENV_DIR = "TINYEXP_BENCH_RESULTS"
SCHEMA = 1
_REQUIRED = ("schema", "benchmark", "timestamp", "machine", "load_average", "command", "sizes")
_REQUIRED += ("raw", "comparisons")


def results_dir(explicit: str | None = None) -> Path:
    """Where results go: the flag, else $TINYEXP_BENCH_RESULTS, else bench/results/."""
    return Path(explicit or os.environ.get(ENV_DIR) or DEFAULT_DIR)


def add_results_arg(parser: argparse.ArgumentParser) -> None:
    """The `--results-dir` flag every benchmark takes."""
    parser.add_argument(
        "--results-dir",
        default=None,
        help=f"where to save the result JSON (default ${ENV_DIR} or bench/results/)",
    )


class Run:
    """The bookkeeping of one benchmark run: started with the load average, saved once."""

    def __init__(self, name: str, sizes: Mapping[str, Any]) -> None:
        self.name = name
        self.sizes = dict(sizes)
        self.started = time.perf_counter()
        self.load_before = load_average()
        self.cpu_before = (cpu_probe(), cpu_sustained())
        self.command = " ".join([Path(sys.executable).name, "-m", f"bench.{name}", *sys.argv[1:]])

    def save(
        self,
        raw: Mapping[str, Any],
        comparisons: list[dict[str, Any]],
        directory: str | None = None,
        notes: str = "",
    ) -> Path:
        """Write the result file; returns its path. Refuses a malformed result."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        doc = {
            "schema": SCHEMA,
            "benchmark": self.name,
            "timestamp": stamp,
            "machine": machine(),
            "load_average": {"before": self.load_before, "after": load_average()},
            "cpu_probe_s": {"before": self.cpu_before[0], "after": cpu_probe()},
            "cpu_sustained_s": {"before": self.cpu_before[1], "after": cpu_sustained()},
            "command": self.command,
            "sizes": self.sizes,
            "wall_s": time.perf_counter() - self.started,
            "raw": raw,
            "comparisons": comparisons,
            "notes": notes,
            **provenance(),
        }
        problems = validate(doc)
        if problems:
            raise ValueError(f"{self.name}: malformed result: {'; '.join(problems)}")
        out = results_dir(directory)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.name}-{stamp}.json"
        # Strict JSON: an interval that does not exist (fewer than 2 pairs) is null, not NaN.
        path.write_text(json.dumps(_no_nan(doc), indent=1, allow_nan=False) + "\n")
        print(f"saved {path}", flush=True)
        for comp in comparisons:
            print(summary_line(comp), flush=True)
        return path


def provenance() -> dict[str, Any]:
    """The commit the run measured and whether the tree was clean (no change to a tracked
    file, no untracked file outside ignored ones): `commit` None outside a git checkout;
    `BENCH_COMMIT` / `BENCH_CLEAN_TREE` state them for a copy of the tree run elsewhere."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout  # not stripped: a porcelain line starts with a space (" M path")

    if os.environ.get("BENCH_COMMIT"):
        # A copy of the tree sent elsewhere (a GPU machine): its git, if any, may hold another
        # HEAD; the sender states the commit it sent and whether that tree was clean.
        clean = {"1": True, "0": False}.get(os.environ.get("BENCH_CLEAN_TREE", ""))
        return {"commit": os.environ["BENCH_COMMIT"], "clean_tree": clean, "dirty_files": []}
    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=normal")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "clean_tree": None, "dirty_files": []}
    files = [line[3:] for line in dirty.splitlines() if line.strip()]
    # Results written by this very run are not a change to the code it measured.
    files = [f for f in files if not f.startswith("bench/results/")]
    return {"commit": commit, "clean_tree": not files, "dirty_files": files[:50]}


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def summary_line(comp: Mapping[str, Any]) -> str:
    """One line: item, value [interval], A/A, verdict."""
    aa = comp.get("aa")
    text = f"{comp['item']}: {comp['value']:.4g} {_interval(comp)}"
    if aa:
        text += f"; A/A {aa['value']:.3f} {_interval(aa)}"
    return f"{text} -> {comp['verdict']}"


def _interval(est: Mapping[str, Any]) -> str:
    low, high = est["interval"]
    if low is None or math.isnan(low):
        return f"(no interval, n={est['n']})"
    return f"[{low:.4g}, {high:.4g}] (n={est['n']})"


def validate(doc: Mapping[str, Any]) -> list[str]:
    """What is wrong with a result document (empty when it is well formed)."""
    problems = [f"missing {key!r}" for key in _REQUIRED if key not in doc]
    if problems:
        return problems
    if not doc["comparisons"]:
        problems.append("no comparisons")
    for comp in doc["comparisons"]:
        problems += _check_estimate(comp, comp.get("item", "?"))
        if comp.get("verdict") not in (*VERDICTS, "no target"):
            problems.append(f"{comp.get('item')}: verdict {comp.get('verdict')!r}")
        if comp.get("aa") is not None:
            problems += _check_estimate(comp["aa"], f"{comp.get('item')} A/A")
    return problems


def _check_estimate(est: Mapping[str, Any], label: str) -> list[str]:
    problems = [f"{label}: missing {k!r}" for k in ("value", "interval", "n") if k not in est]
    if problems:
        return problems
    if not (isinstance(est["value"], float) and math.isfinite(est["value"]) and est["value"] > 0):
        problems.append(f"{label}: value {est['value']!r} is not a finite number > 0")
    low, high = est["interval"]
    if est["n"] >= 2 and not (low is not None and low <= est["value"] <= high):
        problems.append(f"{label}: value {est['value']} outside its interval [{low}, {high}]")
    return problems


def load(path: str | Path) -> dict[str, Any]:
    """A saved result, checked."""
    doc = json.loads(Path(path).read_text())
    problems = validate(doc)
    if problems:
        raise ValueError(f"{path}: malformed result: {'; '.join(problems)}")
    return doc


def every_run(directory: str | Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every saved result of each benchmark, oldest first, by name (each with `_path`)."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for path in Path(directory or results_dir()).glob("*-*.json"):
        name, stamp = path.stem.rsplit("-", 1)
        found.setdefault(name, []).append((stamp, path))
    out: dict[str, list[dict[str, Any]]] = {}
    for name, stamped in found.items():
        out[name] = []
        for _, path in sorted(stamped):
            doc = load(path)
            doc["_path"] = str(path)
            out[name].append(doc)
    return out


def newest(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The newest saved result of each benchmark in a results directory, by name."""
    found: dict[str, tuple[str, Path]] = {}
    for path in Path(directory or results_dir()).glob("*-*.json"):
        name, stamp = path.stem.rsplit("-", 1)
        if name not in found or stamp > found[name][0]:
            found[name] = (stamp, path)
    out = {}
    for name, (_, path) in found.items():
        doc = load(path)
        doc["_path"] = str(path)
        out[name] = doc
    return out
