"""TinyExp 0.0.1's own unit tests, import lines rewritten, pass on tinyexp_core."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.compat.conftest import PortedRelease, compat_env
from tests.compat.selection import DESELECTED, EXPECTED_PASSED, UNPORTED_FILES


def _junit_key(node_id: str) -> str:
    """`tests/a/b.py::Cls::name` as JUnit writes it: `tests.a.b.Cls::name`."""
    path, *rest = node_id.split("::")
    return ".".join([path.removesuffix(".py").replace("/", "."), *rest[:-1]]) + "::" + rest[-1]


def _outcomes(junit: Path) -> dict[str, str]:
    """JUnit key -> passed / failure / error / skipped, from pytest's JUnit XML."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = kinds[0] if kinds else "passed"
    return outcomes


def test_ported_files_are_exactly_the_reviewed_ones(tinyexp_001: PortedRelease) -> None:
    assert tinyexp_001.skipped == UNPORTED_FILES


def test_tinyexp_001_unit_tests_pass(tinyexp_001: PortedRelease, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"]
    cmd += ["--rootdir", str(tinyexp_001.root), f"--junitxml={junit}"]
    for node in DESELECTED:
        cmd += ["--deselect", node]
    proc = subprocess.run(
        cmd,
        cwd=tinyexp_001.root,
        env=compat_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = proc.stdout[-4000:] + proc.stderr[-2000:]
    outcomes = _outcomes(junit)
    assert {n: o for n, o in outcomes.items() if o != "passed"} == {}, report
    assert sorted(outcomes) == sorted(_junit_key(n) for n in EXPECTED_PASSED), report
    assert proc.returncode == 0, report
