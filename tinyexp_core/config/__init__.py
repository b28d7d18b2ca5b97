"""What an experiment is configured with, and how that configuration is checked: the
TinyExp base class and its nested `XXXCfg` dataclasses (`experiment`), the names of the
environment variables an orchestrator sets (`env`), `key=value` overrides parsed, typed,
applied and rendered (`overrides`), the experiment factory that imports a class and
applies overrides to it (`factory`), the orchestrator's layered run overrides and the keys
it owns (`orchestration`), and the typed error of every tinyexp failure (`exceptions`).

`from tinyexp_core.config import build_exp` (and every other name the former
`tinyexp_core/config.py` module exported) keeps working: those names are the factory's,
imported lazily, so `import tinyexp_core.config.exceptions` pulls in nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

# The names of the former `tinyexp_core.config` module, now `config.factory`.
_FACTORY_NAMES = (
    "INTERNAL_FIELDS",
    "Override",
    "apply_overrides",
    "build_exp",
    "coerce",
    "format_help",
    "iter_config_keys",
    "load_exp_class",
    "parse_override",
    "render_value",
    "to_dict",
    "to_yaml",
    "validate",
)

__all__ = sorted(_FACTORY_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _FACTORY_NAMES:
        raise AttributeError(f"module 'tinyexp_core.config' has no attribute {name!r}")
    return getattr(importlib.import_module("tinyexp_core.config.factory"), name)


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(globals()))
