"""Launch one experiment as a DDP job on Ray: one actor per rank in a placement group.

Lifecycle in one place: connect (or start a local Ray on 127.0.0.1: `ray_session`), check
that the request can ever fit (`ray_spec`), reserve a placement group (bounded wait), start
the rank actors (`ray_rank`) with the torch.distributed environment, stream rank-0 logs to
the caller while waiting for the ranks (`ray_wait`), and on every exit path (success, a
worker failure, KeyboardInterrupt or Dagster's termination, which are BaseExceptions) kill
the actors, remove the placement group and stop the Ray that this launcher started, and
nothing else.

Stopping: a stop request on the launcher's `StopHandle` (given to it, else the process's:
`tinyexp_core.training.stop.request_stop`; a terminal signal inside `signals_stop`, a sweep's
pruning) or an interrupt (KeyboardInterrupt, Dagster's termination) first asks every rank actor to
stop (`_RankWorker.request_stop`, served beside `run` by a threaded actor): the ranks agree
on a step, rank 0 checkpoints, they raise RunStoppedError. Ranks still running
`STOP_GRACE_S` later are killed; a forced stop (a second Ctrl-C) kills them at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from tinyexp_core.config.exceptions import ResourceWaitTimeoutError
from tinyexp_core.launchers.ray_rank import _LogSink, _RankWorker
from tinyexp_core.launchers.ray_session import (
    ENV_RAY_ADDRESS,
    LOCAL_HOST,
    LOCAL_RAY,
    ray_session,
)
from tinyexp_core.launchers.ray_spec import (
    RayLaunchSpec,
    check_cluster_fits,
    check_fits_local,
    passthrough_env,
    rank_runtime_env,
)
from tinyexp_core.launchers.ray_wait import (
    ask_to_stop,
    interrupt_inside,
    is_interrupt,
    wait_for_ranks,
)
from tinyexp_core.launchers.runtime import torchrun_env_defaults
from tinyexp_core.services import ray_pool
from tinyexp_core.timing import mark
from tinyexp_core.training.stop import STOP_GRACE_S, StopHandle, process_handle

__all__ = [
    "ENV_RAY_ADDRESS",
    "LOCAL_HOST",
    "LOCAL_RAY",
    "RayLaunchSpec",
    "RayLauncher",
    "check_fits_local",
    "launch_on_ray",
    "passthrough_env",
    "ray_session",
]

_KILL_WAIT_S = 10.0  # how long cleanup waits for killed ranks to be gone


class RayLauncher:
    """Runs `exp.run()` on `num_workers` Ray actors as one DDP job; returns rank results."""

    def __init__(
        self,
        spec: RayLaunchSpec,
        *,
        log_callback: Callable[[str], None] | None = None,
        stop: StopHandle | None = None,
    ) -> None:
        self.spec = spec
        self.log_callback = log_callback
        self.stop = stop if stop is not None else process_handle()
        self.actor_pids: list[int] = []  # for tests and fault injection
        self.actors: list[Any] = []  # this run's rank actors, rank order
        self.warm_ranks = 0  # how many of them came from a warm Ray's pool (ray_pool)
        self.on_started: Callable[[RayLauncher], None] | None = None

    def run(self, exp: Any) -> list[Any]:
        self.spec.validate()
        with ray_session(
            self.spec.resolved_address(), connect_timeout_s=self.spec.connect_timeout_s
        ):
            self.stop.reclaim_signals()  # ray.init replaced the driver's SIGTERM handler
            try:
                check_cluster_fits(self.spec)
                return self._run_in_session(exp)
            except SystemError as err:
                interrupt = interrupt_inside(err)
                if interrupt is None:
                    raise
                raise interrupt from None

    def _run_in_session(self, exp: Any) -> list[Any]:
        import ray
        from ray.util.placement_group import placement_group

        spec = self.spec
        bundle = {"CPU": spec.num_cpus_per_worker}
        if spec.num_gpus_per_worker > 0:
            bundle["GPU"] = spec.num_gpus_per_worker
        pg = placement_group([dict(bundle) for _ in range(spec.num_workers)], strategy="PACK")
        actors: list[Any] = []
        self.actors = actors  # the same list: a stop request reaches every rank started
        refs: list[Any] = []
        sink = None
        # Only a Ray that `ray up` started (ray_head) has a pool.
        pool = ray_pool.find_pool() if self._can_use_warm_ranks() else None
        token = ray_pool.run_token()
        try:
            _reserve(pg, bundle, spec)
            sink = ray.remote(num_cpus=0)(_LogSink).remote()
            runtime_env = rank_runtime_env(spec)
            self._add_ranks(actors, pg, runtime_env, pool, token)
            refs = self._start_ranks(exp, actors, sink, runtime_env["env_vars"])
            try:
                return wait_for_ranks(
                    refs, sink, actors=self.actors, stop=self.stop, forward=self._forward
                )
            except BaseException as err:
                if is_interrupt(err) and not self.stop.forced:  # a checkpoint, then the kill
                    ask_to_stop(actors, refs, wait_s=STOP_GRACE_S)
                raise
        finally:
            self._clean_up(actors, refs, sink, pg)
            if pool is not None:
                ray_pool.release(pool, token)  # the pool refills in the background

    def _add_ranks(
        self, actors: list[Any], pg: Any, runtime_env: dict[str, Any], pool: Any, token: str
    ) -> None:
        """Put the run's rank actors in `actors` as they are made (cleanup kills what is
        there): warm ones from the pool first, then new ones in the placement group."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        spec = self.spec
        warm = [] if pool is None else ray_pool.take(pool, spec.num_workers, token)
        warm, why = ray_pool.keep_current(warm)  # none that imported another tinyexp
        if why:
            self._forward([why])
        self.warm_ranks = len(warm)
        actors.extend(warm)
        if warm:
            mark("warm_ranks_taken")
            taken = f"{len(warm)} of {spec.num_workers} ranks taken from the running Ray's pool"
            self._forward([f"warm ranks: {taken} (started ahead, torch imported)"])
        worker_cls = ray.remote(_RankWorker)
        for rank in range(len(warm), spec.num_workers):
            actors.append(
                worker_cls.options(
                    num_cpus=spec.num_cpus_per_worker,
                    num_gpus=spec.num_gpus_per_worker,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=pg, placement_group_bundle_index=rank
                    ),
                    runtime_env=runtime_env,
                    max_restarts=0,
                    max_concurrency=2,  # request_stop is served while run runs
                ).remote()
            )

    def _clean_up(self, actors: list[Any], refs: list[Any], sink: Any, pg: Any) -> None:
        """Kill the rank and log actors, drain rank 0's last lines, remove the placement
        group: on every exit path, each step whatever the one before it did."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        if refs:
            # Until a killed rank is gone it may still write (its progress status);
            # the caller's final word must come after, so wait for the deaths.
            with contextlib.suppress(Exception):
                ray.wait(refs, num_returns=len(refs), timeout=_KILL_WAIT_S)
        if sink is not None:
            with contextlib.suppress(Exception):
                self._forward(ray.get(sink.drain.remote(), timeout=2))
            with contextlib.suppress(Exception):
                ray.kill(sink, no_restart=True)
        with contextlib.suppress(Exception):
            remove_placement_group(pg)

    def _can_use_warm_ranks(self) -> bool:
        """Warm ranks serve CPU ranks whose runtime_env is environment variables only."""
        return self.spec.num_gpus_per_worker == 0 and set(self.spec.runtime_env) <= {"env_vars"}

    def _start_ranks(
        self, exp: Any, actors: list[Any], sink: Any, env_vars: dict[str, str]
    ) -> list[Any]:
        import ray

        spec = self.spec
        node_ids = ray.get([a.node_id.remote() for a in actors])
        self.actor_pids = ray.get([a.pid.remote() for a in actors])
        master_addr, master_port = ray.get(actors[0].master_endpoint.remote())
        mark("actors_ready")
        if len(set(node_ids)) == 1:
            # One host (always so for the local Ray, whose node Ray registers under its
            # routable IP even when asked for 127.0.0.1): rendezvous over loopback.
            master_addr = LOCAL_HOST
        refs = []
        exp_blob = ray.cloudpickle.dumps(exp)
        nodes = list(dict.fromkeys(node_ids))
        threads = max(1, int(spec.num_cpus_per_worker))
        for rank, actor in enumerate(actors):
            same_node = [r for r, n in enumerate(node_ids) if n == node_ids[rank]]
            env = {
                **torchrun_env_defaults(
                    num_threads=threads,
                    group_rank=nodes.index(node_ids[rank]),
                    num_groups=len(nodes),
                    rank=rank,
                    world_size=spec.num_workers,
                ),
                **env_vars,  # a warm rank started before the run's runtime_env existed
                "RANK": str(rank),
                "WORLD_SIZE": str(spec.num_workers),
                "LOCAL_RANK": str(same_node.index(rank)),
                "LOCAL_WORLD_SIZE": str(len(same_node)),
                "MASTER_ADDR": master_addr,
                "MASTER_PORT": str(master_port),
                **spec.env,
            }
            if master_addr == LOCAL_HOST and "GLOO_SOCKET_IFNAME" not in os.environ:
                env["GLOO_SOCKET_IFNAME"] = "lo"  # every rank is on this host
            refs.append(actor.run.remote(exp_blob, env, sink if rank == 0 else None, threads))
        if self.on_started is not None:
            self.on_started(self)
        return refs

    def _forward(self, lines: list[str]) -> None:
        if self.log_callback is None:
            return
        for line in lines:
            self.log_callback(line)


def _reserve(pg: Any, bundle: dict[str, float], spec: RayLaunchSpec) -> None:
    """Wait for the placement group, at most `placement_timeout_s`: a busy cluster fails
    the run with what it waited for, it does not hang it."""
    import ray

    try:
        ray.get(pg.ready(), timeout=spec.placement_timeout_s)
        mark("placement_group_ready")
    except ray.exceptions.GetTimeoutError:
        raise ResourceWaitTimeoutError(
            f"placement group of {spec.num_workers} x {bundle}", spec.placement_timeout_s
        ) from None


def launch_on_ray(
    exp: Any,
    *,
    log_callback: Callable[[str], None] | None = None,
    stop: StopHandle | None = None,
) -> list[Any]:
    """`launcher=ray` for the CLI: the experiment's own worker settings, its rank results."""
    exp.ensure_run_id()
    spec = RayLaunchSpec.from_exp(exp, env=passthrough_env())
    return RayLauncher(spec, log_callback=log_callback, stop=stop).run(exp)
