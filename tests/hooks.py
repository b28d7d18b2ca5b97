"""Seams for test experiments: wrap a method of the training runtime for one `train()`.

A test experiment (importable by Ray workers by module name) overrides `train()` and wraps
what it needs inside the rank process, e.g. `with stopping_after_step(5): return
super().train()`; the example's own loop runs unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

from tinyexp_core.training.recipe import StepCheckpoints
from tinyexp_core.training.stop import request_stop


@contextlib.contextmanager
def wrapped(
    owner: type,
    name: str,
    *,
    before: Callable[..., Any] | None = None,
    after: Callable[..., Any] | None = None,
) -> Iterator[None]:
    """Within the block, `owner.name(self, *a, **k)` calls `before(self, *a, **k)` first and
    `after(self, result, *a, **k)` once it returned."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(self, *args, **kwargs)
        result = original(self, *args, **kwargs)
        if after is not None:
            after(self, result, *args, **kwargs)
        return result

    setattr(owner, name, call)
    try:
        yield
    finally:
        setattr(owner, name, original)


def stopping_after_step(stop_at_step: int) -> contextlib.AbstractContextManager[None]:
    """Ask for a stop (as SIGTERM or the Ray launcher does) once global step `stop_at_step`
    is done, before the ranks' stop check of that step."""

    def ask(_checkpoints: Any, step: int, _position: Any) -> None:
        if step == stop_at_step:
            request_stop(f"test: stop after step {step}")

    return wrapped(StepCheckpoints, "__call__", before=ask)
