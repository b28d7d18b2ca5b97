"""One pipeline per name in a code location (tinyexp_dagster/declarations.py): a module whose
body declares a name twice fails at import with one line naming both lines; one declaration
built again (a helper called twice) is not a second one; declarations outside a module body
(this test's own) are left to Dagster."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_dagster import default_resources, pipeline_defs

TABULAR = "tinyexp_core.examples.tabular_exp:Exp"


def load(tmp_path: Path, module: str, body: str):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)


def test_one_module_declaring_a_name_twice_fails_naming_both_lines(tmp_path: Path) -> None:
    body = f"""\
        import dagster as dg
        from tinyexp_dagster import default_resources, pipeline_defs

        defs = dg.Definitions.merge(
            pipeline_defs("a", {TABULAR!r}),
            pipeline_defs("b", {TABULAR!r}),
            pipeline_defs("a", {TABULAR!r}, ["train_cfg.num_epochs=1"]),
        )
        """
    with pytest.raises(ConfigValueError) as raised:
        load(tmp_path, "twice_location", body)
    message = str(raised.value)
    assert "\n" not in message
    assert "one pipeline per name" in message and "'a'" in message
    assert "twice_location.py:5" in message and "twice_location.py:7" in message


def test_one_declaration_built_again_is_not_a_second(tmp_path: Path) -> None:
    body = f"""\
        import dagster as dg
        from tinyexp_dagster import default_resources, pipeline_defs

        def pipelines():
            return pipeline_defs("a", {TABULAR!r})

        defs = pipelines()
        again = pipelines()  # the same declaration (file and line), built twice
        """
    module = load(tmp_path, "again_location", body)
    assert isinstance(module.again, dg.Definitions)


def test_outside_a_module_body_dagster_reports_the_duplicate() -> None:
    merged = dg.Definitions.merge(
        pipeline_defs("a", TABULAR),
        pipeline_defs("a", TABULAR),
        dg.Definitions(resources=default_resources()),
    )
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="Duplicate asset key"):
        merged.get_repository_def()
