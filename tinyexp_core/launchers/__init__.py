"""Launchers: local processes (`mp`: N spawned ranks or torchrun's world) or Ray (`ray`)."""

from __future__ import annotations

from tinyexp_core.launchers.inprocess import run_in_process
from tinyexp_core.launchers.mp import launch_local

__all__ = ["LAUNCHERS", "launch_local", "run_in_process"]

LAUNCHERS = ("mp", "ray")
