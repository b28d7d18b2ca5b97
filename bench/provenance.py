"""Where a saved result comes from, and whether it still describes the code: for the page.

Each result file records the commit it measured and whether the tree was clean
(`bench.results.provenance`; files saved before that have neither). A benchmark's newest
run is **stale** when a commit after it changed code the benchmark measures
(`bench.names.MEASURES`): with a recorded commit, any commit in `<commit>..HEAD` touching
those paths; without one, any such commit dated after the run's timestamp.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.names import MEASURES

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def changes_since(doc: Mapping[str, Any], paths: Sequence[str]) -> list[str] | None:
    """Commits (`<hash> <date>`, newest first) that changed `paths` after the run `doc`
    measured; None when git cannot say."""
    fmt = "--format=%h %cs"
    commit = doc.get("commit")
    if commit and _git("cat-file", "-e", f"{commit}^{{commit}}") is not None:
        out = _git("log", fmt, f"{commit}..HEAD", "--", *paths)
    else:
        stamp = time.strptime(doc["timestamp"], "%Y%m%dT%H%M%SZ")
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp)
        out = _git("log", fmt, f"--since={since}", "HEAD", "--", *paths)
    return None if out is None else [line for line in out.splitlines() if line]


def verdicts(runs: Sequence[Mapping[str, Any]]) -> str:
    """Verdict counts over every comparison of every run: `met 3, inconclusive 2`."""
    counts = Counter(c["verdict"] for doc in runs for c in doc["comparisons"])
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{v} {n}" for v, n in ordered) or "-"


def summary(name: str, runs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The provenance cells of one benchmark: runs, verdicts, commit, clean, stale."""
    if not runs:
        return {"runs": "0", "verdicts": "-", "commit": "-", "clean": "-", "stale": "-"}
    newest = runs[-1]
    commit = newest.get("commit")
    clean = newest.get("clean_tree")
    changed = changes_since(newest, MEASURES.get(name, (f"bench/{name}.py",)))
    if changed is None:
        stale = "unknown (no git)"
    elif changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        stale = f"**stale**: code it measures changed since ({changed[0]}{more})"
    else:
        stale = "current"
    return {
        "runs": str(len(runs)),
        "verdicts": verdicts(runs),
        "commit": f"`{commit[:10]}`" if commit else "not recorded",
        "clean": {True: "clean", False: "**dirty**", None: "not recorded"}[clean],
        "stale": stale,
    }


def history(runs: Sequence[Mapping[str, Any]]) -> str:
    """One line per saved run, oldest first: file, commit, and each comparison's verdict."""
    lines = []
    for doc in runs:
        commit = (doc.get("commit") or "no commit")[:10]
        found = "; ".join(f"{c['verdict']}" for c in doc["comparisons"])
        lines.append(f"- `{Path(doc['_path']).name}` ({commit}): {found}")
    return "\n".join(lines)
