"""Helpers for the reliability tests: Dagster definitions on test resources, fault hooks,
Ray/Redis/process inspection and storage snapshots."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psutil

from tinyexp_dagster import pipeline_defs
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    RunScopedJSONIOManager,
    StallSettingsResource,
    StorageResource,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXP = "tests.reliability.exps:ReliabilityExp"
NAME = "mnist"  # the pipeline's name: the project's default, on the test experiment
# as defs/mnist/defs.yaml; every new version becomes champion (the gate: test_champion.py)
PIPELINE = pipeline_defs(NAME, EXP, metric_threshold=0.9, champion_tolerance=1.0)
LAUNCHER_ACTORS = {"_RankWorker", "_LogSink"}
# Small and quick: the default digits data, 2 ranks x 1 CPU, step reports every 5 steps.
FAST = ["data_cfg.batch_size=64"]
ENV_STORAGE = "TINYEXP_RELIABILITY_STORAGE"
ENV_REDIS = "TINYEXP_RELIABILITY_REDIS"
REDIS_PASSWORD = "rel-Secret-7f3a9c"  # the password Redis's secret, searched for in logs


# ---------------------------------------------------------------- Dagster wiring


class HookedRayResource(RayDDPResource):
    """RayDDPResource whose launcher calls `HOOKS.on_started` once the ranks run."""

    def run(self, exp: Any, spec: Any, *, log=None, on_started=None, stop=None) -> list[Any]:
        hook = on_started or HOOKS.on_started
        return super().run(exp, spec, log=log, on_started=hook, stop=stop)


@dataclass
class _Hooks:
    on_started: Callable[[Any], None] | None = None


HOOKS = _Hooks()


def resources(storage_root: str | Path, redis_url: str | None, **ray_config: Any) -> dict[str, Any]:
    ray_config = {"num_workers": 2, "num_cpus_per_worker": 1.0, **ray_config}
    return {
        "ray": HookedRayResource(**ray_config),
        "redis": RedisProgressResource(url=redis_url),
        "storage": StorageResource(root=str(storage_root)),
        "stalls": StallSettingsResource(),
    }


def build_defs(storage_root: str | Path, redis_url: str | None, **ray_config: Any):
    """The test experiment's pipeline (named `mnist`) on test resources."""
    return dg.Definitions.merge(
        PIPELINE, dg.Definitions(resources=resources(storage_root, redis_url, **ray_config))
    )


def training_pipeline_job() -> dg.JobDefinition:
    """`training_pipeline` for `dg.reconstructable` (re-execution needs a job it can rebuild).

    Dagster caches a reconstructed definition per process, so the storage root and Redis
    are `EnvVar`s, read when each run starts, not when the definition is built.
    """
    return dg.Definitions.merge(
        PIPELINE,
        dg.Definitions(
            resources={
                "ray": HookedRayResource(num_workers=2, num_cpus_per_worker=1.0),
                "redis": RedisProgressResource(url=dg.EnvVar(ENV_REDIS)),
                "storage": StorageResource(root=dg.EnvVar(ENV_STORAGE)),
                "stalls": StallSettingsResource(),
                "io_manager": RunScopedJSONIOManager(
                    storage=StorageResource(root=dg.EnvVar(ENV_STORAGE))
                ),
            }
        ),
    ).resolve_job_def(f"{NAME}_training_pipeline")


def train_config(overrides: Iterable[str] = (), **fields: Any) -> dict[str, Any]:
    return {"ops": {op("trained_model"): {"config": {"overrides": [*FAST, *overrides], **fields}}}}


def op(asset: str) -> str:
    """The op (and step) name of `mnist/<asset>`."""
    return f"{NAME}__{asset}"


def key(asset: str) -> dg.AssetKey:
    """`mnist/<asset>`."""
    return dg.AssetKey([NAME, asset])


def events(instance: dg.DagsterInstance, run_id: str, *types: dg.DagsterEventType) -> list:
    """Event log entries of `run_id` of the given types, oldest first."""
    return [
        e
        for e in instance.all_logs(run_id)
        if e.dagster_event is not None and e.dagster_event.event_type in types
    ]


def step_errors(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Error messages of every failed or retried step attempt, in order."""
    found = events(
        instance, run_id, dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.STEP_UP_FOR_RETRY
    )
    messages = []
    for entry in found:
        data = entry.dagster_event.event_specific_data
        error = getattr(data, "error", None)
        parts = []
        while error is not None:
            parts.append(error.message)
            error = error.cause
        messages.append(" | ".join(parts))
    return messages


def log_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message or "" for e in instance.all_logs(run_id)]


def materialization_metadata(instance: dg.DagsterInstance, run_id: str, asset: str) -> dict:
    """Metadata of the run's materialization of `mnist/<asset>`."""
    for entry in events(instance, run_id, dg.DagsterEventType.ASSET_MATERIALIZATION):
        mat = entry.dagster_event.event_specific_data.materialization
        if mat.asset_key == key(asset):
            return {k: v.value for k, v in mat.metadata.items()}
    raise AssertionError(f"no materialization of {asset} in run {run_id}")


# ---------------------------------------------------------------- Ray and processes


def alive_launcher_actors() -> list[dict[str, Any]]:
    """Launcher actors still ALIVE, read from the GCS actor table.

    `ray.util.state.list_actors` needs the dashboard, which the session's Ray leaves out
    (it starts faster); the GCS table holds the same states.
    """
    import ray

    return [
        row
        for row in ray._private.state.actors().values()
        if row["State"] == "ALIVE" and row["ActorClassName"] in LAUNCHER_ACTORS
    ]


def placement_group_states() -> dict[str, str]:
    import ray

    return {pg_id: row["state"] for pg_id, row in ray.util.placement_group_table().items()}


def new_placement_groups(before: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in placement_group_states().items() if k not in before}


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---------------------------------------------------------------- Redis


def redis_client(url: str):
    from tinyexp_core.services.redis_client import make_client

    return make_client(url, socket_timeout_s=2.0, connect_timeout_s=2.0)


def wait_for_status(
    url: str, run_id: str, statuses: Iterable[str], timeout_s: float, attempt: int | None = None
) -> dict[str, str]:
    """Poll the run's progress hash until its status is one of `statuses`."""
    from tinyexp_core.progress import read_run

    wanted = set(statuses)
    client = redis_client(url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = read_run(client, run_id)
            if run.get("status") in wanted and (
                attempt is None or run.get("attempt") == str(attempt)
            ):
                return run
            time.sleep(0.2)
        raise TimeoutError(f"run {run_id} not in {wanted} after {timeout_s} s: {run}")
    finally:
        client.close()


@dataclass
class KillRankWhenRunning:
    """An `on_started` hook: SIGKILL one rank once the run's Redis status is `running`."""

    rank: int = 1
    kills: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def __call__(self, launcher: Any) -> None:
        env = launcher.spec.env
        pids = list(launcher.actor_pids)
        thread = threading.Thread(
            target=self._kill,
            args=(env["TINYEXP_PROGRESS_URL"], env["TINYEXP_PROGRESS_RUN_ID"], pids, env),
            daemon=True,
        )
        self.threads.append(thread)
        thread.start()

    def _kill(self, url: str, run_id: str, pids: list[int], env: dict[str, str]) -> None:
        try:
            attempt = int(env.get("TINYEXP_ATTEMPT", "1"))
            run = wait_for_status(url, run_id, ["running"], 120, attempt=attempt)
            os.kill(pids[self.rank], signal.SIGKILL)
            self.kills.append(
                {"time": time.time(), "pid": pids[self.rank], "pids": pids, "run": run}
            )
        except Exception as err:  # reported by the test
            self.errors.append(f"{type(err).__name__}: {err}")


# ---------------------------------------------------------------- storage


def copy_prepared(prepared: str, storage_root: Path) -> None:
    """Put a prepared dataset where `prepared_dataset` finds it valid and reuses it."""
    source = Path(prepared)
    shutil.copytree(source, storage_root / "datasets" / source.parent.name / source.name)


def snapshot(root: str | Path, exclude: Iterable[str] = ()) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under `root`."""
    root = Path(root)
    skip = tuple(exclude)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(skip):
            stat = path.stat()
            out[rel] = (stat.st_size, stat.st_mtime_ns)
    return out


def _asset(asset: str) -> dg.AssetsDefinition:
    [found] = [a for a in PIPELINE.assets if a.key == key(asset)]
    return found


# The test experiment's assets, for `dg.materialize([...])`.
prepared_dataset = _asset("prepared_dataset")
trained_model = _asset("trained_model")
