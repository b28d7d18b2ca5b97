"""A `dg` project laid out as docs/your-model.md's walkthrough, written into a temporary
folder outside the repository, and the commands run in it (`dg`, `dagster`).

`team_models/defs/<folder>/defs.yaml` declare pipelines (`tinyexp_dagster.TinyExpPipeline`),
`team_models/definitions.py` merges the defs folder with `pipeline_defs(...)` calls and
`default_resources()`. The experiments are the package's small examples (the tabular
regressor, the digits CNN)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULE = "team_models.definitions"
TABULAR = "tinyexp_core.examples.tabular_exp:Exp"
DIGITS = "tinyexp_core.examples.mnist_exp:Exp"

PYPROJECT = f"""\
[project]
name = "team-models"
version = "0.1.0"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "team_models"
code_location_target_module = "{MODULE}"
code_location_name = "{MODULE}"
"""

DEFINITIONS = """\
\"\"\"The code location: the pipelines under defs/ and here, one set of resources.\"\"\"

from pathlib import Path

import dagster as dg

from tinyexp_dagster import default_resources, pipeline_defs

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent),
{pipelines}    dg.Definitions(resources=default_resources()),
)
"""


def defs_yaml(name: str, experiment: str, overrides: Sequence[str] = ()) -> str:
    """A `TinyExpPipeline` declaration."""
    listed = ", ".join(f'"{o}"' for o in overrides)
    return textwrap.dedent(
        f"""\
        type: tinyexp_dagster.TinyExpPipeline
        attributes:
          name: {name}
          experiment: {experiment}
          overrides: [{listed}]
        """
    )


def write_project(
    root: Path,
    folders: dict[str, str],
    python: dict[str, str],
    overrides: Sequence[str] = ("train_cfg.num_epochs=1",),
) -> Path:
    """The project under `root`: one `defs/<name>/defs.yaml` per `folders` entry (name ->
    experiment) and one `pipeline_defs(name, experiment, overrides)` per `python` entry."""
    package = root / "team_models"
    (package / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text('"""A team\'s models as Dagster pipelines."""\n')
    for name, experiment in folders.items():
        (package / "defs" / name).mkdir()
        (package / "defs" / name / "defs.yaml").write_text(defs_yaml(name, experiment, overrides))
    calls = "".join(
        f"    pipeline_defs({name!r}, {experiment!r}, {list(overrides)!r}),\n"
        for name, experiment in python.items()
    )
    (package / "definitions.py").write_text(DEFINITIONS.format(pipelines=calls))
    return root


def environment(project: Path, dagster_home: Path, **extra: str) -> dict[str, str]:
    """What a user's shell has: the venv's tools on PATH, the project importable (the
    repository stands in for the installed tinyexp-dagster)."""
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # `dg` sets DAGSTER_IS_DEV_CLI itself; without a Redis URL its loads meet the embedded
    # Redis logic (dev_redis.py), as a user's do.
    unset = ("DAGSTER_IS_DEV_CLI", "TINYEXP_REDIS_URL", "TINYEXP_STORAGE_ROOT")
    return {
        **{k: v for k, v in os.environ.items() if k not in unset},
        "DAGSTER_HOME": str(dagster_home),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(BIN.parent),
        "PYTHONPATH": os.pathsep.join([str(project), str(REPO_ROOT)]),
        **extra,
    }


def run(
    argv: Sequence[str], project: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """`argv` (its first item a tool of the venv) run in the project."""
    tool = shutil.which(argv[0], path=str(BIN))
    assert tool, f"{argv[0]} is not installed in {BIN}"
    return subprocess.run(
        [tool, *argv[1:]],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
