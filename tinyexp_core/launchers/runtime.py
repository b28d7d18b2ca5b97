"""Process-local hooks a launcher installs for the experiment it runs."""

from __future__ import annotations

from collections.abc import Callable

_log_forwarder: Callable[[str], None] | None = None


def set_log_forwarder(fn: Callable[[str], None] | None) -> None:
    """Rank-0 log lines also go to `fn` (the Ray launcher streams them to its caller)."""
    global _log_forwarder
    _log_forwarder = fn


def get_log_forwarder() -> Callable[[str], None] | None:
    return _log_forwarder
