"""One pipeline per name in a code location: a second declaration fails at load, naming both.

Pipelines are declared in `defs/<folder>/defs.yaml` (the `TinyExpPipeline` component) or in
Python (`pipeline_defs(...)`), and merged by Dagster; two with the same name would otherwise
fail later with Dagster's `Duplicate asset key: AssetKey(['<name>', ...])`, which names
neither declaration.

A code location is loaded by running its module (`definitions.py`): every declaration made
while one module body runs, directly or through `dg.load_from_defs_folder`, belongs to that
load. Declarations made outside a module body (a test function, a `@dg.definitions`
function that Dagster calls later) are not checked here; Dagster's own error still stops
such a duplicate.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from tinyexp_core.config.exceptions import ConfigValueError

__all__ = ["declare", "declared_in"]

# The component declaring the pipeline being built (its defs.yaml), None in plain Python.
_COMPONENT_FILE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tinyexp_pipeline_component_file", default=None
)
_lock = threading.Lock()
# The module body being run (held, so that its id cannot be reused) and what it declared.
_load: FrameType | None = None
_declared: dict[str, str] = {}


@contextlib.contextmanager
def declared_in(defs_yaml: str) -> Iterator[None]:
    """Pipelines declared inside this block are declared by the component file `defs_yaml`."""
    token = _COMPONENT_FILE.set(defs_yaml)
    try:
        yield
    finally:
        _COMPONENT_FILE.reset(token)


def declare(name: str, depth: int = 1) -> None:
    """Record that the pipeline `name` is declared here: by the enclosing component's file,
    else by the caller `depth` frames above this function's caller. Raises ConfigValueError
    naming both declarations when the current load already declared `name` elsewhere (the
    same file and line, or the same component file, twice is one declaration built again:
    a helper function called twice, Dagster building a component again)."""
    global _load
    caller = sys._getframe(depth + 1)
    component = _COMPONENT_FILE.get()
    where = (
        _shown(component) if component else f"{_shown(caller.f_code.co_filename)}:{caller.f_lineno}"
    )
    load = _module_body(caller)
    if load is None:
        return
    with _lock:
        if load is not _load:  # a new load: what an earlier one declared is not in it
            _load = load
            _declared.clear()
        previous = _declared.get(name)
        if previous is not None and previous != where:
            allowed = f"one pipeline per name in a code location; {name!r} is declared by "
            raise ConfigValueError("name", name, f"{allowed}{previous} and by {where}")
        _declared[name] = where


def _module_body(frame: FrameType | None) -> FrameType | None:
    """The nearest enclosing frame that runs a module's body (not `__main__`'s), or None."""
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") != "__main__":
            return frame
        frame = frame.f_back
    return None


def _shown(path: str) -> str:
    """`path` relative to the working directory when it is below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith("..") else relative
