"""Launch one experiment as a DDP job on Ray: one actor per rank in a placement group.

Lifecycle in one place: connect (or start a local Ray on 127.0.0.1), check that the
request can ever fit, reserve a placement group (bounded wait), start the rank actors
with the torch.distributed environment, stream rank-0 logs to the caller, and on every
exit path (success, a worker failure, KeyboardInterrupt or Dagster's termination, which
are BaseExceptions) kill the actors, remove the placement group and stop the Ray that
this launcher started, and nothing else.

Stopping: a stop request on the launcher's `StopHandle` (given to it, else the process's:
`tinyexp_core.stop.request_stop`; a terminal signal inside `signals_stop`, a sweep's pruning)
or an interrupt (KeyboardInterrupt, Dagster's termination) first asks every rank actor to
stop (`_RankWorker.request_stop`, served beside `run` by a threaded actor): the ranks agree
on a step, rank 0 checkpoints, they raise RunStoppedError. Ranks still running
`STOP_GRACE_S` later are killed; a forced stop (a second Ctrl-C) kills them at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tinyexp_core.exceptions import (
    ConfigValueError,
    InsufficientResourcesError,
    RayConnectionError,
    ResourceWaitTimeoutError,
    RunStoppedError,
    WorkerFailedError,
)
from tinyexp_core.launchers import ray_pool
from tinyexp_core.launchers.runtime import (
    forward_stdout,
    set_log_forwarder,
    steady_malloc,
    thread_env_defaults,
    torchrun_env_defaults,
)
from tinyexp_core.stop import STOP_GRACE_S, StopHandle, process_handle
from tinyexp_core.timing import ENV_TIMING_FILE, mark

ENV_RAY_ADDRESS = "RAY_ADDRESS"
LOCAL_RAY = "local"  # an address: a local Ray started for this run and stopped after it
LOCAL_HOST = "127.0.0.1"
_ENV_RAY_CLUSTERS = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local node is 127.0.0.1
_PEER_DEATH_GRACE_S = 3.0  # after a rank fails, how long to look for a peer that died
_KILL_WAIT_S = 10.0  # how long cleanup waits for killed ranks to be gone


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


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail in seconds, not minutes, when a Ray address does not answer."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayConnectionError(address, "expected host:port, ray://host:port or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise RayConnectionError(address, f"{type(err).__name__}: {err}") from None


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make the local Ray that ray.init starts register as 127.0.0.1 and listen on loopback.

    On Linux Ray replaces a requested 127.0.0.1 by the host's routable IP and then binds its
    servers (GCS, raylet, agents, workers) to every interface; with the node IP 127.0.0.1
    they bind to loopback only. Ray reads the switch from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    when it is imported (so the constant is set too); the processes ray.init starts
    inherit the variable, and the workers the raylet starts later inherit it from it.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(_ENV_RAY_CLUSTERS)
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_ENV_RAY_CLUSTERS] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(_ENV_RAY_CLUSTERS, None)
        else:
            os.environ[_ENV_RAY_CLUSTERS] = saved_env


@contextlib.contextmanager
def ray_session(address: str = "", *, connect_timeout_s: float = 10.0) -> Iterator[bool]:
    """Reuse a connected Ray, connect to `address`, or start a local one; yields `owned`.

    Only a session opened here is shut down on exit. `address` "" or `local`: a local Ray
    started here (and so stopped on exit).
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address and address != LOCAL_RAY:
        _check_reachable(address, connect_timeout_s)
        try:
            if _is_loopback(address) and not _answers_beyond_loopback(address):
                _connect_loopback(address)
            else:
                ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except Exception as err:
            raise RayConnectionError(address, f"{type(err).__name__}: {err}") from None
    else:
        saved = os.environ.pop(ENV_RAY_ADDRESS, None)
        try:
            # address="local": always a fresh local instance, never a `ray start` head
            # that happens to run on this machine.
            with _loopback_only():
                ray.init(
                    address="local",
                    _node_ip_address=LOCAL_HOST,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="WARNING",
                    object_store_memory=256 * 1024 * 1024,
                )
        finally:
            if saved is not None:
                os.environ[ENV_RAY_ADDRESS] = saved
    mark("ray_ready")
    try:
        yield True
    finally:
        ray.shutdown()


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rpartition(":")[0]
    return host in (LOCAL_HOST, "localhost")


def _answers_beyond_loopback(address: str) -> bool:
    """Whether the Ray at a loopback `address` also answers at this host's routable IP, as
    a `ray start` head does (its node is registered under that IP, so a plain connect
    works); a Ray started in loopback mode (`ray up`) answers on 127.0.0.1 only."""
    from ray.util import get_node_ip_address

    ip = get_node_ip_address()
    port = int(address.rpartition(":")[2])
    if ip == LOCAL_HOST:
        return False
    try:
        with socket.create_connection((ip, port), timeout=1.0):
            return True
    except OSError:
        return False


def _connect_loopback(address: str) -> None:
    """Join a Ray that runs on this machine's loopback (`tinyexp-dagster ray up`).

    That Ray registered its node as 127.0.0.1 (`_loopback_only`), so this driver must too,
    or it looks for a raylet at the host's routable IP. A local Ray started by `ray.init`
    uses token authentication with the user's token file; Ray turns it on for `auto`
    addresses only, so do as it does there when a token is available.
    """
    import ray

    with _loopback_only():
        with contextlib.suppress(ImportError):  # a Ray without token authentication
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        ray.init(
            address=address,
            _node_ip_address=LOCAL_HOST,
            log_to_driver=False,
            logging_level="WARNING",
        )


def _check_cluster_fits(spec: RayLaunchSpec) -> None:
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


class _LogSink:
    """A tiny actor buffering log lines from the ranks until the driver drains them."""

    def __init__(self, max_lines: int = 10_000) -> None:
        self._lines: list[str] = []
        self._max = max_lines
        self.dropped = 0

    def append(self, line: str) -> None:
        if len(self._lines) >= self._max:
            self.dropped += 1
            return
        self._lines.append(line)

    def drain(self) -> list[str]:
        lines, self._lines = self._lines, []
        return lines


class _RankWorker:
    """One DDP rank: sets the torch.distributed environment, then runs the experiment."""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def master_endpoint(self) -> tuple[str, int]:
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def pid(self) -> int:
        return os.getpid()

    def request_stop(self, reason: str = "stop requested by the Ray launcher") -> None:
        """Ask the training loop running in `run` to checkpoint and stop (returns at once)."""
        from tinyexp_core.stop import request_stop

        request_stop(reason)

    def warm_up(self, preimports: tuple[str, ...]) -> int:
        """A warm rank's start (`ray_pool`): malloc settings and imports ahead of its run."""
        from tinyexp_core.launchers.ray_pool import warm_up

        return warm_up(preimports)

    def run(self, exp_blob: bytes, env: dict[str, str], log_sink: Any, num_threads: int) -> Any:
        """Run the pickled experiment as the rank `env` names. The environment (the job's
        variables, PYTHONPATH among them) is applied before the experiment is unpickled,
        so a rank started before its run (a warm one) imports the driver's modules too."""
        from ray import cloudpickle

        from tinyexp_core.launchers.ray_pool import apply_python_path

        os.environ.update(env)
        apply_python_path(env.get("PYTHONPATH", ""))
        exp = cloudpickle.loads(exp_blob)
        _announce(exp, int(env["RANK"]))
        steady_malloc()  # before the first tensor: see tinyexp_core.launchers.runtime
        import torch

        torch.set_num_threads(max(1, num_threads))
        forward = None if log_sink is None else (lambda line: log_sink.append.remote(line))
        set_log_forwarder(forward)
        try:
            with forward_stdout(forward):
                return exp.run()
        finally:
            set_log_forwarder(None)
            _release_announcement()


def _announce(exp: Any, rank: int) -> None:
    """Register the rank (host, pid) and its stack dump, for the stall sensor's diagnosis."""
    progress = getattr(exp, "progress_cfg", None)
    if progress is None or not hasattr(progress, "announce_rank"):
        return  # an experiment with its own progress config: nothing to register with
    with contextlib.suppress(Exception):  # diagnosis must never fail a run
        progress.announce_rank(exp.ensure_run_id(), rank=rank, run_dir=exp.get_run_dir())


def _release_announcement() -> None:
    from tinyexp_core.stacks import release_dump_handler

    with contextlib.suppress(Exception):  # cleanup must never mask the run's outcome
        release_dump_handler()


def _runtime_env(spec: RayLaunchSpec) -> dict[str, Any]:
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
                _check_cluster_fits(self.spec)
                return self._run_in_session(exp)
            except SystemError as err:
                interrupt = _interrupt_inside(err)
                if interrupt is None:
                    raise
                raise interrupt from None

    def _run_in_session(self, exp: Any) -> list[Any]:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        spec = self.spec
        bundle = {"CPU": spec.num_cpus_per_worker}
        if spec.num_gpus_per_worker > 0:
            bundle["GPU"] = spec.num_gpus_per_worker
        pg = placement_group([dict(bundle) for _ in range(spec.num_workers)], strategy="PACK")
        actors: list[Any] = []
        self.actors = actors  # the same list: _wait asks them to stop
        refs: list[Any] = []
        sink = None
        # Only a Ray that `ray up` started (ray_head) has a pool.
        pool = ray_pool.find_pool() if self._can_use_warm_ranks() else None
        token = ray_pool.run_token()
        try:
            try:
                ray.get(pg.ready(), timeout=spec.placement_timeout_s)
                mark("placement_group_ready")
            except ray.exceptions.GetTimeoutError:
                raise ResourceWaitTimeoutError(
                    f"placement group of {spec.num_workers} x {bundle}", spec.placement_timeout_s
                ) from None
            sink = ray.remote(num_cpus=0)(_LogSink).remote()
            runtime_env = _runtime_env(spec)
            env_vars = runtime_env["env_vars"]
            warm = [] if pool is None else ray_pool.take(pool, spec.num_workers, token)
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
            refs = self._start_ranks(exp, actors, sink, env_vars)
            try:
                return self._wait(refs, sink)
            except BaseException as err:
                if _is_interrupt(err) and not self.stop.forced:  # a checkpoint, then the kill
                    self._ask_to_stop(actors, refs, wait_s=STOP_GRACE_S)
                raise
        finally:
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
            if pool is not None:
                ray_pool.release(pool, token)  # the pool refills in the background

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

    def _wait(self, refs: list[Any], sink: Any) -> list[Any]:
        """Poll the ranks; the first failure ends the job and names the rank and cause."""
        import ray

        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        stopped: list[RunStoppedError] = []
        stop_deadline: float | None = None
        pending = list(refs)
        while pending:
            if self.stop.requested and stop_deadline is None:
                stop_deadline = time.monotonic() + STOP_GRACE_S
                self._ask_to_stop(self.actors, [], wait_s=0, reason=self.stop.reason)
            if self.stop.forced:
                raise RunStoppedError("", -1, f"{self.stop.reason}: ranks ended at once")
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                raise RunStoppedError("", -1, f"ranks did not stop within {STOP_GRACE_S:g} s")
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            self._forward(ray.get(sink.drain.remote()))
            for ref in done:
                rank = rank_of[ref]
                try:
                    results[rank] = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    raise WorkerFailedError(
                        rank, f"worker process died ({_first_line(err)})"
                    ) from err
                except ray.exceptions.RayTaskError as err:
                    if isinstance(err.cause, RunStoppedError):
                        stopped.append(err.cause)  # a clean stop, not a failure
                        continue
                    died = self._dead_peer(pending, rank_of)
                    if died is not None:
                        raise died from err
                    cause = err.cause if err.cause is not None else err
                    raise WorkerFailedError(rank, f"{type(cause).__name__}: {cause}") from cause
                except ray.exceptions.RayError as err:
                    # e.g. an error the driver cannot unpickle; its text still ends with it.
                    raise WorkerFailedError(rank, _last_line(err)) from err
        if stopped:
            raise min(stopped, key=lambda e: not e.checkpoint)  # rank 0's names the file
        return [results[r] for r in range(len(refs))]

    def _ask_to_stop(
        self, actors: list[Any], refs: list[Any], *, wait_s: float, reason: str = ""
    ) -> None:
        """Send every rank a stop request; wait up to `wait_s` for their runs to end."""
        import ray

        for actor in actors:
            with contextlib.suppress(Exception):
                actor.request_stop.remote(reason or "stop requested by the Ray launcher")
        if refs and wait_s > 0:
            with contextlib.suppress(BaseException):
                ray.wait(refs, num_returns=len(refs), timeout=wait_s)

    def _dead_peer(self, pending: list[Any], rank_of: dict[Any, int]) -> Any:
        """A rank that died, if one did, as the error to report instead of its peer's.

        When a rank's process dies, its peers' collectives fail at once ("connection
        closed by peer") and may reach the driver before Ray reports the death; the dead
        rank is the cause worth naming, so give Ray a moment to report it.
        """
        import ray

        deadline = time.monotonic() + _PEER_DEATH_GRACE_S
        while pending and time.monotonic() < deadline:
            done, pending = ray.wait(
                pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic())
            )
            for ref in done:
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    return WorkerFailedError(
                        rank_of[ref], f"worker process died ({_first_line(err)})"
                    )
                except Exception:  # another rank failing the same way: keep looking
                    continue
        return None

    def _forward(self, lines: list[str]) -> None:
        if self.log_callback is None:
            return
        for line in lines:
            self.log_callback(line)


def _is_interrupt(err: BaseException) -> bool:
    """KeyboardInterrupt, Dagster's termination and the like, also when Ray wrapped them."""
    if not isinstance(err, Exception):
        return True
    return isinstance(err, SystemError) and _interrupt_inside(err) is not None


def _interrupt_inside(err: SystemError) -> BaseException | None:
    """The interrupt a signal handler raised while Ray's C code was waiting, if any.

    A handler that raises inside a C call (Ray's wait/get poll for signals) surfaces as
    SystemError("... returned a result with an exception set") caused by the original
    exception. KeyboardInterrupt and Dagster's termination are BaseExceptions and must
    reach the caller as themselves, or they pass for ordinary, retryable errors.
    """
    cause = err.__cause__
    if cause is not None and not isinstance(cause, Exception):
        return cause
    return None


def _last_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1].strip() if text else type(err).__name__


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def passthrough_env() -> dict[str, str]:
    """The driver's TINYEXP_* variables (identity, the progress URL) for every rank."""
    return {k: v for k, v in os.environ.items() if k.startswith("TINYEXP_")}


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
