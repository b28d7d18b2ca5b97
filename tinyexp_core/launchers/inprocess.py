"""Run an experiment in this process, as one rank of whatever world the environment names.

Under torchrun or `accelerate launch` every process is started for us and the rank
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) is already set;
the accelerator reads it. `launch_local` (launchers/mp.py) spawns the ranks otherwise.
"""

from __future__ import annotations

from typing import Any


def run_in_process(exp: Any) -> Any:
    """Run `exp.run()` here and return its result."""
    return exp.run()
