"""`lazy_module(name)`: a module object that imports `name` on first attribute access.

Why: an experiment class is imported whenever Dagster loads its definitions (the typed
`exp` config is built from its dataclasses). Modules that a config dataclass needs
(`checkpoint`, the examples) use torch only inside methods, so they bind `torch` lazily
and loading definitions does not pay torch's start-up (seconds).
"""

from __future__ import annotations

import importlib
import types
from typing import Any

__all__ = ["lazy_module"]


class _LazyModule(types.ModuleType):
    """Stands in for a module until an attribute is read, then forwards to the real one."""

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        return getattr(module, attr)


def lazy_module(name: str) -> Any:
    """A stand-in for `import name` that imports it on first use (`torch.save`, ...)."""
    return _LazyModule(name)
