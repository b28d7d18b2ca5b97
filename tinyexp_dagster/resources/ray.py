"""RayDDPResource: runs one experiment as a DDP job on Ray for a Dagster step."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar, get_args

import dagster as dg
from pydantic import Field, PrivateAttr

from tinyexp_dagster.resources.storage import StorageResource

if TYPE_CHECKING:
    from tinyexp_core.config.experiment import TinyExp
    from tinyexp_core.launchers.ray import RayLauncher
    from tinyexp_core.launchers.ray_spec import RayLaunchSpec
    from tinyexp_core.training.stop import StopHandle

_T = TypeVar("_T")

RayAccelerator = Literal["auto", "cpu", "ddp"]
RAY_ACCELERATORS: tuple[str, ...] = get_args(RayAccelerator)
# How long a run's end waits for a head start it began (the spawn, not Ray's start-up):
# a process that exits mid-spawn would leave a holder that no `starting` file records.
_SPAWN_WAIT_S = 60.0


class _EarlyHead:
    """The default local Ray's start, begun in a thread when a run that trains starts
    (`RayDDPResource.setup_for_execution`), so Ray's start-up runs beside the steps before
    training (the dataset). It spawns the holder through `ray_head.spawn_head`, the locked
    path `ensure_head` takes (two runs never start two heads), and claims the head; the
    training step then waits for it through `ensure_head`, with its timeouts and errors."""

    def __init__(self, storage: StorageResource) -> None:
        self.root = ""  # the storage root's local folder, once known
        self.pid = 0  # the holder spawned here; 0: a live or starting one was there
        self.stale = ""  # why a recorded head was replaced
        self.error: Exception | None = None
        self._thread = threading.Thread(
            target=self._start, args=(storage,), name="tinyexp-ray-head-start", daemon=True
        )
        self._thread.start()

    def _start(self, storage: StorageResource) -> None:
        from tinyexp_core.services import ray_head

        try:
            root = str(storage.resolved_root())
            idle = ray_head.idle_stop_s()
            _, self.stale = ray_head.live_head_address(root)
            _, pid, spawned = ray_head.spawn_head(root, idle_stop_after_s=idle)
            ray_head.claim(root)
            self.root, self.pid = root, pid if spawned else 0
        except Exception as err:  # the training step starts the Ray itself and reports it
            self.error = err

    def wait(self, timeout_s: float | None = None) -> bool:
        """Whether the start has done its part (spawned, found a head, or failed)."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def _connected_to_ray() -> bool:
    """This process is connected to a Ray already (a launcher then uses it as it is)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


class RayDDPResource(dg.ConfigurableResource):
    """DDP on Ray: a local Ray on 127.0.0.1 by default, one per storage root with warm
    ranks, started by the first run (or `tinyexp-dagster ray up`) and reused by the next
    (a warm start), stopped after `TINYEXP_RAY_IDLE_STOP_S` without runs; `address="local"`:
    one started for the run and stopped after; an existing cluster with `address` (`auto`,
    `host:port`, `ray://host:port`) or `$RAY_ADDRESS`. One actor per rank in a placement
    group; actors and the group are removed on every exit path, including Dagster's
    termination. With `storage` (as `default_resources()` sets it), a run that trains on the
    default local Ray starts it when the run starts, beside the dataset step.

    Its sizes and accelerator are defaults a run's config can replace; what a run ends up
    with reaches the experiment as overrides (`overrides()`), and the launch request is
    read back from the experiment (`spec()`), so the run record states what ran."""

    address: str | None = Field(
        default=None,
        description="Ray to run on: `auto`, `host:port` or `ray://host:port`; `local`: a "
        "local Ray started for the run and stopped after it; unset: $RAY_ADDRESS, else the "
        "storage root's warm local Ray (started when none runs, stopped when idle for "
        "TINYEXP_RAY_IDLE_STOP_S)",
    )
    num_workers: int = Field(
        default=2, description="DDP ranks, one Ray actor each (a run's config may replace it)"
    )
    num_cpus_per_worker: float = Field(
        default=1.0, description="CPUs reserved per rank; also its torch thread count"
    )
    num_gpus_per_worker: float = Field(default=0.0, description="GPUs reserved per rank")
    accelerator: RayAccelerator = Field(
        default="auto",
        description="auto: DDP with nccl where the rank has a GPU, else gloo on CPU; "
        "cpu: gloo on CPU; ddp: DDP, nccl on GPU and gloo without",
    )
    placement_timeout_s: float = Field(
        default=120.0, description="seconds to wait for a busy cluster to grant the ranks"
    )
    connect_timeout_s: float = Field(
        default=10.0, description="seconds to wait for a Ray address to answer"
    )
    ship_code: Literal["off", "module", "project"] = Field(
        default="off",
        description="ship the experiment's code to workers that lack it, through Ray's "
        "runtime env: off (installed on the nodes), module (the top-level package holding "
        "the experiment class, as py_modules), project (the working directory, as "
        "working_dir, without .venv/.git/.tinyexp/*.pt/data); ranks then start fresh, not warm",
    )
    collective_timeout_s: float = Field(
        default=300.0,
        description="seconds a rank may wait in a collective for a silent peer before the "
        "job fails (the experiment's accelerator_cfg.collective_timeout_s)",
    )
    storage: StorageResource | None = Field(
        default=None,
        description="the runs' storage resource; set: a run with a training step that uses "
        "the default local Ray starts that Ray of the storage root when the run starts, "
        "beside the steps before training (the dataset); unset: the training step starts it",
    )
    _early_head: _EarlyHead | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Dagster calls this when a run starts that has a step using this resource (the
        training asset), before its first step: with `storage` and the default local Ray,
        that Ray's start begins now in the background (`_EarlyHead`); `run_address` waits
        for it. Nothing starts for an address, `local`, or a process already on a Ray."""
        if self.storage is not None and self._uses_default_local_ray():
            self._early_head = _EarlyHead(self.storage)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._early_head is not None:  # a run that ended before its training step
            self._early_head.wait(_SPAWN_WAIT_S)

    def _uses_default_local_ray(self) -> bool:
        return not self.resolved_address() and not _connected_to_ray()

    def resolved_address(self) -> str:
        """The Ray address a run uses: `address`, else $RAY_ADDRESS, else "" (local Ray)."""
        return self.address or os.environ.get("RAY_ADDRESS", "")

    def run_address(self, storage_root: str, log: Callable[[str], None] | None = None) -> str:
        """The address a run uses: `resolved_address()` (`local`: a Ray started for the
        run and stopped after it), else the default local Ray of `storage_root`: the live
        one (`tinyexp-dagster ray up`'s, or one an earlier run left warm), else one started
        now that outlives the run and stops after `TINYEXP_RAY_IDLE_STOP_S` without runs."""
        from tinyexp_core.launchers.ray_session import kept_address
        from tinyexp_core.services.ray_head import ensure_head, live_head_address

        explicit = self.resolved_address()
        if explicit:
            return explicit
        say = log or (lambda _: None)
        if _connected_to_ray():  # the launcher uses this process's Ray
            kept = kept_address()  # a sweep worker's, from its first trial: the same record
            if kept:
                say(f"warm start: this process stays connected to the local Ray at {kept}")
            return kept
        early = self._take_early_head(storage_root, say)
        address, why = live_head_address(storage_root)
        why = why or (early.stale if early is not None else "")
        if why:
            say(f"{why}; starting a new one")
        head, started = ensure_head(storage_root)
        early_pid = early.pid if early is not None else 0
        if started or head.pid == early_pid:
            when = " when the run started" if head.pid == early_pid else ""
            say(f"started the local Ray at {head.address} for {storage_root}{when}: it stays "
                "warm for the next runs (TINYEXP_RAY_IDLE_STOP_S; `ray_address=local` starts "
                "and stops one per run)")  # fmt: skip
        else:
            say(f"warm start: reusing the local Ray at {head.address}")
        return head.address

    def _take_early_head(self, storage_root: str, say: Callable[[str], None]) -> _EarlyHead | None:
        """The start `setup_for_execution` began for `storage_root`, once it has spawned the
        holder (or found a head); None when there is none to use (said when it failed)."""
        early, self._early_head = self._early_head, None
        if early is None:
            return None
        early.wait()  # the same lock `ensure_head` would wait for
        if early.error is not None:
            error = f"{type(early.error).__name__}: {early.error}"
            say(f"starting the local Ray when the run started failed ({error}); starting it now")
            return None
        if Path(early.root) != Path(storage_root).resolve():  # run config changed the root
            if early.pid:
                say(f"the local Ray started when the run started is {early.root}'s, not "
                    f"{storage_root}'s: it stops when idle (TINYEXP_RAY_IDLE_STOP_S)")  # fmt: skip
            return None
        return early

    def forced(
        self,
        *,
        address: str | None = None,
        num_workers: int | None = None,
        num_cpus_per_worker: float | None = None,
        num_gpus_per_worker: float | None = None,
        accelerator: str | None = None,
        collective_timeout_s: float | None = None,
    ) -> dict[str, str | int | float]:
        """What this resource decides for a run, as typed values forced on the experiment:
        each argument replaces the resource's field when not None (`address`:
        `resolved_address()`). The accelerator keys are for a `tinyexp_core` AcceleratorCfg;
        the training asset fits them to an experiment's own accelerator config."""

        def pick(run: _T | None, own: _T) -> _T:
            return own if run is None else run

        return {
            "launcher": "ray",
            "num_workers": pick(num_workers, self.num_workers),
            "num_cpus_per_worker": pick(num_cpus_per_worker, self.num_cpus_per_worker),
            "num_gpus_per_worker": pick(num_gpus_per_worker, self.num_gpus_per_worker),
            "ray_address": self.resolved_address() if address is None else address,
            "accelerator_cfg.accelerator": pick(accelerator, self.accelerator),
            "accelerator_cfg.collective_timeout_s": pick(
                collective_timeout_s, self.collective_timeout_s
            ),
        }

    def spec(self, exp: TinyExp, *, env: dict[str, str] | None = None) -> RayLaunchSpec:
        """The launch request read from the experiment (workers, CPUs, GPUs, address) plus
        this resource's timeouts; validated without touching Ray (impossible sizes fail
        here). `env` carries identity and secrets only, never a config value."""
        from tinyexp_core.launchers.ray_spec import RayLaunchSpec
        from tinyexp_core.launchers.ship import code_runtime_env

        spec = RayLaunchSpec.from_exp(
            exp,
            placement_timeout_s=self.placement_timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            env=dict(env or {}),
            runtime_env=code_runtime_env(self.ship_code, exp),
        )
        spec.validate()
        return spec

    def run(
        self,
        exp: TinyExp,
        spec: RayLaunchSpec,
        *,
        log: Callable[[str], None] | None = None,
        on_started: Callable[[RayLauncher], None] | None = None,
        stop: StopHandle | None = None,
    ) -> list[object]:
        """Run `exp` on `spec.num_workers` ranks; returns every rank's result (what its
        `exp.run()` returned), rank 0 first.
        `stop`: the run's `tinyexp_core.training.stop.StopHandle` (None: the process's)."""
        from tinyexp_core.launchers.ray import RayLauncher

        launcher = RayLauncher(spec, log_callback=log, stop=stop)
        launcher.on_started = on_started
        return launcher.run(exp)
