"""Ship the experiment's code to Ray workers that lack it, through Ray's runtime environment.

A cluster then needs only the tinyexp packages (and torch) installed: `module` uploads the
top-level package that holds the experiment class (`py_modules`), `project` the driver's
working directory (`working_dir`, with virtualenvs, git data, storage and checkpoints left
out). Ray uploads each once per content hash and caches it on every node.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Literal, get_args

from tinyexp_core.config.exceptions import ConfigValueError

__all__ = ["PROJECT_EXCLUDES", "SHIP_CODE_CHOICES", "ShipCode", "code_runtime_env"]

ShipCode = Literal["off", "module", "project"]
SHIP_CODE_CHOICES: tuple[str, ...] = get_args(ShipCode)
# What a project upload leaves out: environments, VCS data, storage roots, weights, data.
PROJECT_EXCLUDES = [
    ".venv/",
    "venv/",
    ".git/",
    ".tinyexp/",
    "__pycache__/",
    "*.pt",
    "*.pth",
    "data/",
    "node_modules/",
]


def code_runtime_env(mode: str, exp: Any, working_dir: str | None = None) -> dict[str, Any]:
    """The runtime_env keys that ship `exp`'s code in `mode` (`off`: none)."""
    if mode not in SHIP_CODE_CHOICES:
        raise ConfigValueError("ship_code", mode, SHIP_CODE_CHOICES)
    if mode == "off":
        return {}
    if mode == "project":
        return {"working_dir": working_dir or os.getcwd(), "excludes": list(PROJECT_EXCLUDES)}
    module_name = type(exp).__module__
    top = sys.modules.get(module_name.split(".")[0])
    paths = list(getattr(top, "__path__", []) or [])
    if top is None or not paths:
        # Ray's py_modules takes package directories (or wheels, zips), not a lone file.
        raise ConfigValueError(
            "ship_code",
            mode,
            f"'project' (or a package around {module_name}): 'module' ships a package",
        )
    return {"py_modules": [paths[0]]}
