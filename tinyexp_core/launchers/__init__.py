"""Launchers: in this process (`mp`, torchrun/accelerate aware) or on Ray (`ray`)."""

from __future__ import annotations

from .inprocess import run_in_process

__all__ = ["LAUNCHERS", "run_in_process"]

LAUNCHERS = ("mp", "ray")
