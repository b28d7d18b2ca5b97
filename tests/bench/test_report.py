"""docs/benchmarks.md is generated from saved results only."""

from __future__ import annotations

import json

from bench import provenance, report, results, stats
from bench.names import BENCHMARKS


def test_page_lists_saved_results_and_says_what_is_not_measured(tmp_path) -> None:
    comp = stats.compare(
        "5. step time, progress on / off (production)",
        [1.00, 1.01, 0.99, 1.00],
        [1.0, 1.0, 1.0, 1.0],
        target=1.01,
        direction="lower",
        control=([1.0, 1.02, 0.99, 1.01], [1.0, 1.0, 1.0, 1.0]),
        what="t",
    )
    results.Run("progress_overhead", {"rounds": 4}).save({}, [comp], directory=str(tmp_path))
    page = report.render(results.every_run(tmp_path))
    (line,) = [x for x in page.splitlines() if x.startswith("| 5. step time")][:1]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == f"**{comp['value']:.3f}**"
    assert cells[2].startswith("[") and cells[3][0].isdigit()
    assert cells[5] == "**inconclusive**"
    assert cells[-1].startswith("`progress_overhead-")
    others = [name for name, _, _ in BENCHMARKS if name != "progress_overhead"]
    assert page.count("not yet measured with intervals") >= len(others)
    assert "Warm start" in page and "Step checkpoints" in page


def _comparison(verdict_value: float) -> dict:
    return stats.compare(
        "10. step time, step checkpoints every 20 steps on / off",
        [verdict_value] * 3,
        [1.0, 1.0, 1.0],
        target=1.02,
        direction="lower",
        control=([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]),
        what="t",
    )


def test_every_result_records_its_commit_and_the_page_counts_runs_and_flags_stale(tmp_path):
    path = results.Run("step_checkpoint", {"trials": 3}).save(
        {}, [_comparison(1.0)], directory=str(tmp_path)
    )
    newest = json.loads(path.read_text())
    assert len(newest["commit"]) == 40 and isinstance(newest["clean_tree"], bool)
    # An older run, saved before results recorded a commit, from a day long gone.
    old = {**newest, "timestamp": "20200101T000000Z", "comparisons": [_comparison(1.5)]}
    del old["commit"], old["clean_tree"]
    (tmp_path / "step_checkpoint-20200101T000000Z.json").write_text(json.dumps(old))

    runs = results.every_run(tmp_path)["step_checkpoint"]
    assert [r["timestamp"] for r in runs] == ["20200101T000000Z", newest["timestamp"]]
    cells = provenance.summary("step_checkpoint", runs)
    assert cells["runs"] == "2"
    assert cells["verdicts"] == "met 1, missed 1"
    assert cells["commit"] == f"`{newest['commit'][:10]}`"
    assert cells["stale"] == "current", "nothing changed after the commit it measured"
    assert provenance.summary("step_checkpoint", runs[:1])["stale"].startswith("**stale**")
    assert provenance.summary("step_checkpoint", runs[:1])["commit"] == "not recorded"
    page = report.render(results.every_run(tmp_path))
    (line,) = [x for x in page.splitlines() if x.startswith("| 10. Step checkpoints")]
    assert "| 2 | met 1, missed 1 |" in line
    assert "step_checkpoint-20200101T000000Z.json` (no commit): missed" in page


def test_provenance_names_dirty_files_whole_and_takes_the_senders_commit(monkeypatch):
    monkeypatch.delenv("BENCH_COMMIT", raising=False)
    porcelain = " M bench/gpu_check.py\n?? notes.txt\n"  # the first line starts with a space

    def fake_run(cmd, **kwargs):
        out = "abc123\n" if "rev-parse" in cmd else porcelain
        return __import__("subprocess").CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr("subprocess.run", fake_run)
    found = results.provenance()
    assert found == {
        "commit": "abc123",
        "clean_tree": False,
        "dirty_files": ["bench/gpu_check.py", "notes.txt"],
    }
    # A copy run on another machine: its own git may hold another HEAD; the sender says.
    monkeypatch.setenv("BENCH_COMMIT", "f" * 40)
    monkeypatch.setenv("BENCH_CLEAN_TREE", "1")
    assert results.provenance() == {"commit": "f" * 40, "clean_tree": True, "dirty_files": []}
