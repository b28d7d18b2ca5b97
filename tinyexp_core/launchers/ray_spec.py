"""What a Ray DDP job asks for (RayLaunchSpec), the checks that it can ever fit (on this
machine, on the cluster), and what every rank gets: its runtime_env and the driver's
TINYEXP_* variables."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from tinyexp_core.config.exceptions import ConfigValueError, InsufficientResourcesError
from tinyexp_core.launchers.ray_session import ENV_RAY_ADDRESS, LOCAL_RAY
from tinyexp_core.launchers.runtime import thread_env_defaults
from tinyexp_core.timing import ENV_TIMING_FILE


@dataclass
class RayLaunchSpec:
    """What to ask of Ray for one DDP job."""

    num_workers: int = 2
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    address: str = ""  # empty: $RAY_ADDRESS, else a local Ray started (and stopped) here
    placement_timeout_s: float = 60.0  # wait for a busy cluster this long, then fail
    connect_timeout_s: float = 10.0
    env: dict[str, str] = field(default_factory=dict)  # identity and secrets only
    runtime_env: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_exp(cls, exp: Any, **launch: Any) -> RayLaunchSpec:
        """The request the experiment's own fields state (workers, CPUs, GPUs, address),
        so what Ray runs and what the run record says come from one place; `launch` holds
        the rest (timeouts, env)."""
        return cls(
            num_workers=exp.num_workers,
            num_cpus_per_worker=exp.num_cpus_per_worker,
            num_gpus_per_worker=exp.num_gpus_per_worker,
            address=exp.ray_address,
            **launch,
        )

    def validate(self) -> None:
        """Checks that need no cluster: run before Ray is touched."""
        if self.num_workers < 1:
            raise ConfigValueError("num_workers", self.num_workers, "an integer >= 1")
        if self.num_cpus_per_worker <= 0:
            raise ConfigValueError("num_cpus_per_worker", self.num_cpus_per_worker, "> 0")
        if self.num_gpus_per_worker < 0:
            raise ConfigValueError("num_gpus_per_worker", self.num_gpus_per_worker, ">= 0")
        if self.placement_timeout_s <= 0:
            raise ConfigValueError("placement_timeout_s", self.placement_timeout_s, "> 0")
        if self.resolved_address() in ("", LOCAL_RAY):
            check_fits_local(self)

    def resolved_address(self) -> str:
        return self.address or os.environ.get(ENV_RAY_ADDRESS, "")


def check_fits_local(spec: RayLaunchSpec) -> None:
    """A local Ray has this machine's CPUs and GPUs, so an impossible request fails now."""
    cpus = float(os.cpu_count() or 1)
    need_cpu = spec.num_workers * spec.num_cpus_per_worker
    if need_cpu > cpus:
        raise InsufficientResourcesError(
            "CPU", need_cpu, cpus, f"{spec.num_workers} workers x {spec.num_cpus_per_worker:g}"
        )
    if spec.num_gpus_per_worker > 0:
        gpus = float(_local_gpu_count())
        need_gpu = spec.num_workers * spec.num_gpus_per_worker
        if need_gpu > gpus:
            raise InsufficientResourcesError("GPU", need_gpu, gpus, "local machine")


def _local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def check_cluster_fits(spec: RayLaunchSpec) -> None:
    """Compare the request with the cluster's total and per-node resources."""
    import ray

    per_node = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for resource, per_worker in (
        ("CPU", spec.num_cpus_per_worker),
        ("GPU", spec.num_gpus_per_worker),
    ):
        if per_worker <= 0:
            continue
        total = sum(float(r.get(resource, 0)) for r in per_node)
        need = per_worker * spec.num_workers
        if need > total:
            raise InsufficientResourcesError(
                resource, need, total, f"{spec.num_workers} workers x {per_worker:g}"
            )
        biggest = max((float(r.get(resource, 0)) for r in per_node), default=0.0)
        if per_worker > biggest:
            raise InsufficientResourcesError(
                resource, per_worker, biggest, "one worker must fit on one node"
            )


def rank_runtime_env(spec: RayLaunchSpec) -> dict[str, Any]:
    """The ranks' runtime_env: the spec's, with the driver's import path, torchrun's thread
    defaults (set at process start: OpenMP reads them when torch is imported) and the
    timing file (a Ray this process did not start, a warm one, has its own environment)."""
    runtime_env = dict(spec.runtime_env)
    env_vars = runtime_env["env_vars"] = dict(runtime_env.get("env_vars", {}))
    env_vars.setdefault("PYTHONPATH", _python_path())
    for name, value in thread_env_defaults(int(spec.num_cpus_per_worker)).items():
        env_vars.setdefault(name, value)
    if os.environ.get(ENV_TIMING_FILE):
        env_vars.setdefault(ENV_TIMING_FILE, os.environ[ENV_TIMING_FILE])
    return runtime_env


def _python_path() -> str:
    """The driver's import path, so ranks import the same experiment modules locally."""
    entries = [os.getcwd()] + [p for p in sys.path if p and os.path.isdir(p)]
    return os.pathsep.join(dict.fromkeys(entries))


def passthrough_env() -> dict[str, str]:
    """The driver's TINYEXP_* variables (identity, the progress URL) for every rank."""
    return {k: v for k, v in os.environ.items() if k.startswith("TINYEXP_")}
