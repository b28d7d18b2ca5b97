"""What the docs have printed keeps importing: every import line in the README's and
docs/your-model.md's code blocks now, and the names the previous docs/your-model.md printed
(before the training session and the package regrouping), which users may have copied."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)

# As the previous docs/your-model.md printed them (its template and its prose).
PREVIOUSLY_PRINTED = [
    ("tinyexp_core", "checkpoint"),
    ("tinyexp_core.accelerators", "AcceleratorCfg"),
    ("tinyexp_core.contract", "Checkpoints"),
    ("tinyexp_core.contract", "EpochRecord"),
    ("tinyexp_core.contract", "EvalResult"),
    ("tinyexp_core.contract", "PreparedData"),
    ("tinyexp_core.contract", "PrimaryMetric"),
    ("tinyexp_core.contract", "TrainResult"),
    ("tinyexp_core.experiment", "TinyExp"),
    ("tinyexp_core.data.tabular", "load_tabular_split"),
    ("tinyexp_core.data.tabular", "read_tabular_manifest"),
    ("tinyexp_core.data.tabular", "prepare_tabular"),
    ("tinyexp_core.recipe", "StepCheckpoints"),
    ("tinyexp_dagster", "default_resources"),
    ("tinyexp_dagster", "pipeline_defs"),
    ("tinyexp_dagster", "TinyExpPipeline"),
]


def _printed_now() -> list[tuple[str, str]]:
    found = []
    for doc in (ROOT / "README.md", ROOT / "docs" / "your-model.md"):
        for block in BLOCK.findall(doc.read_text(encoding="utf-8")):
            # join parenthesized imports onto one line
            text = re.sub(r"\(\s*([^)]*?)\s*\)", lambda m: m.group(1).replace("\n", " "), block)
            for line in text.splitlines():
                match = re.match(r"\s*from (tinyexp_\w+(?:\.\w+)*) import (.+)$", line)
                if match:
                    for name in match.group(2).split(","):
                        found.append((match.group(1), name.split(" as ")[0].strip()))
    return found


def test_the_docs_print_imports_at_all() -> None:
    assert len(_printed_now()) >= 10  # the extraction found them (no vacuous pass)


@pytest.mark.parametrize("module, name", sorted(set(PREVIOUSLY_PRINTED) | set(_printed_now())))
def test_a_printed_import_works(module: str, name: str) -> None:
    imported = importlib.import_module(module)
    assert getattr(imported, name, None) is not None or importlib.import_module(
        f"{module}.{name}"
    ), f"from {module} import {name}"
