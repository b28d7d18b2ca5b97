"""Launchers: local processes (`mp`: N spawned ranks or torchrun's world) or Ray (`ray`)."""

from __future__ import annotations

from .inprocess import run_in_process
from .mp import launch_local

__all__ = ["LAUNCHERS", "launch_local", "run_in_process"]

LAUNCHERS = ("mp", "ray")
