"""RayDDPResource: runs one experiment as a DDP job on Ray for a Dagster step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg
from pydantic import Field


class RayDDPResource(dg.ConfigurableResource):
    """DDP on Ray: a local Ray on 127.0.0.1 (started on demand, stopped after) by default,
    an existing cluster with `address` (`auto`, `host:port`, `ray://host:port`) or
    `$RAY_ADDRESS`. One actor per rank in a placement group; actors and the group are
    removed on every exit path, including Dagster's termination."""

    address: str | None = Field(default=None, description="None: $RAY_ADDRESS or local Ray")
    num_workers: int = 2
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    accelerator: str = Field(default="auto", description="auto | cpu | ddp")
    placement_timeout_s: float = 120.0  # a busy cluster is waited for this long
    connect_timeout_s: float = 10.0
    collective_timeout_s: float = 300.0  # a silent rank fails the job after this long

    def spec(
        self,
        *,
        num_workers: int | None = None,
        num_cpus_per_worker: float | None = None,
        num_gpus_per_worker: float | None = None,
        env: dict[str, str] | None = None,
    ) -> Any:
        """The launch request, validated without touching Ray (impossible sizes fail here)."""
        from tinyexp_core.exceptions import ConfigValueError
        from tinyexp_core.launchers.ray import RayLaunchSpec

        if self.accelerator not in ("auto", "cpu", "ddp"):
            raise ConfigValueError("accelerator", self.accelerator, ("auto", "cpu", "ddp"))
        spec = RayLaunchSpec(
            num_workers=self.num_workers if num_workers is None else num_workers,
            num_cpus_per_worker=(
                self.num_cpus_per_worker if num_cpus_per_worker is None else num_cpus_per_worker
            ),
            num_gpus_per_worker=(
                self.num_gpus_per_worker if num_gpus_per_worker is None else num_gpus_per_worker
            ),
            address=self.address or "",
            placement_timeout_s=self.placement_timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            env={"TINYEXP_COLLECTIVE_TIMEOUT_S": str(self.collective_timeout_s), **(env or {})},
        )
        spec.validate()
        return spec

    def accelerator_override(self) -> list[str]:
        """The experiment override that makes ranks use this resource's accelerator."""
        return [f"accelerator_cfg.accelerator={self.accelerator}"]

    def run(
        self,
        exp: Any,
        spec: Any,
        *,
        log: Callable[[str], None] | None = None,
        on_started: Callable[[Any], None] | None = None,
    ) -> list[Any]:
        """Run `exp` on `spec.num_workers` ranks; returns every rank's result, rank 0 first."""
        from tinyexp_core.launchers.ray import RayLauncher

        launcher = RayLauncher(spec, log_callback=log)
        launcher.on_started = on_started
        return launcher.run(exp)
