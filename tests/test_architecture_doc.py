"""docs/architecture.md is the map of the house: every module of the two packages is on it
with its job, nothing gone is still listed, and the run flow is drawn."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("tinyexp_core", "tinyexp_dagster")
ROW = re.compile(r"^\| `([\w/]+\.py)` \| (.+) \|$", re.MULTILINE)


def _section(text: str, package: str) -> str:
    start = text.index(f"### `{package}`")
    end = text.find("\n## ", start)
    nxt = text.find("\n### ", start + 1)
    ends = [e for e in (end, nxt) if e != -1]
    return text[start : min(ends)] if ends else text[start:]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_is_on_the_map(package: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    listed = dict(ROW.findall(_section(text, package)))
    modules = {
        p.relative_to(ROOT / package).as_posix()
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__init__.py"
    }
    assert not modules - set(listed), (
        f"modules missing from docs/architecture.md: {sorted(modules - set(listed))}"
    )
    assert not set(listed) - modules, f"listed but gone: {sorted(set(listed) - modules)}"
    assert all(job.strip() for job in listed.values())


def test_the_run_flow_is_drawn() -> None:
    text = DOC.read_text(encoding="utf-8")
    diagram = text[text.index("```mermaid") :]
    diagram = diagram[: diagram.index("```", 3)]
    for step in ("Launchpad", "trained_model", "run plan", "RayDDPResource", "Ray ranks",
                 "TrainingSession", "Redis", "training_progress_sensor", "Dagster UI"):  # fmt: skip
        assert step in diagram, step
