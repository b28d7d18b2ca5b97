"""docs/benchmarks.md is generated from saved results only."""

from __future__ import annotations

from bench import report, results, stats
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
    page = report.render(results.newest(tmp_path))
    (line,) = [x for x in page.splitlines() if x.startswith("| 5. step time")][:1]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == f"**{comp['value']:.3f}**"
    assert cells[2].startswith("[") and cells[3][0].isdigit()
    assert cells[5] == "**inconclusive**"
    assert cells[-1].startswith("`progress_overhead-")
    others = [name for name, _, _ in BENCHMARKS if name != "progress_overhead"]
    assert page.count("not yet measured with intervals") >= len(others)
    assert "Warm start" in page and "Step checkpoints" in page
