"""The project's own code location (`defs`): the pipelines declared under `defs/` (each a
`TinyExpPipeline` in a `defs.yaml`; the default is `mnist`) plus `default_resources()`.

Loaded by `dagster dev -m tinyexp_dagster.definitions`, `dagster job execute -m ...`,
workspace.yaml and `dg` (pyproject's `[tool.dg]`). Resources follow the environment, see
`tinyexp_dagster.resources.defaults`.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from tinyexp_core.timing import mark
from tinyexp_dagster.resources.defaults import default_resources

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent),
    dg.Definitions(resources=default_resources()),
)

mark("definitions_loaded")  # for the startup benchmarks (a no-op without a timing file)
