"""Waiting in tests: the one `eventually`."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(predicate: Callable[[], bool], timeout_s: float = 20.0, poll_s: float = 0.2) -> bool:
    """Whether `predicate()` becomes true within `timeout_s` (polled every `poll_s`; one
    last try at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()
