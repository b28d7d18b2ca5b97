"""Warm ranks (tinyexp_core.services.ray_pool): the pool of a warm Ray keeps rank processes
started with torch imported; a run takes them for its ranks, uses each for that run only,
and the pool refills after it; a module the pool never saw imports in them; what a started
process cannot serve (GPUs, a runtime_env beyond variables) starts ranks of its own."""

from __future__ import annotations

import os
import textwrap

import pytest

from tests.core.distributed_exps import FailingExp, WhoAmIExp
from tests.waiting import eventually as _wait
from tinyexp_core.config.exceptions import WorkerFailedError
from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec
from tinyexp_core.launchers.ray_rank import _RankWorker
from tinyexp_core.services import ray_pool


def eventually(predicate, timeout_s: float = 60.0) -> bool:
    return _wait(predicate, timeout_s)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def status(pool) -> dict:
    return ray_pool.pool_status(pool, timeout_s=30)


def full(pool, size: int) -> bool:
    s = status(pool)
    return s["ready"] == size and s["starting"] == 0 and s["lent"] == 0


@pytest.fixture
def pool(request, ray_cluster):
    """A pool on the session's Ray for one test (size: the test's parameter, else 2)."""
    size = getattr(request, "param", 2)
    handle = ray_pool.start_pool(size, _RankWorker)
    assert eventually(lambda: full(handle, size), 180), status(handle)  # torch imports, 2 CPUs
    yield handle
    ray_cluster.kill(handle, no_restart=True)
    assert eventually(lambda: ray_pool.find_pool() is None, 30), "other tests must not see it"


def launch(exp, num_workers: int = 2) -> tuple[RayLauncher, list]:
    launcher = RayLauncher(RayLaunchSpec(num_workers=num_workers))
    return launcher, launcher.run(exp)


def test_a_run_takes_warm_ranks_once_and_the_pool_refills(pool):
    warm = set(status(pool)["ready_pids"])
    launcher, results = launch(WhoAmIExp())
    assert launcher.warm_ranks == 2
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert {r["pid"] for r in results} == warm, "both ranks ran in the warm processes"
    assert eventually(lambda: not any(alive(p) for p in warm), 30), "a warm rank serves once"
    assert eventually(lambda: full(pool, 2)), status(pool)
    fresh = set(status(pool)["ready_pids"])
    assert not fresh & warm
    launcher, results = launch(WhoAmIExp())
    assert {r["pid"] for r in results} == fresh, "the next run takes the replacements"


@pytest.mark.parametrize("pool", [1], indirect=True)
def test_a_run_needing_more_ranks_than_are_warm_starts_the_rest(pool):
    (warm,) = status(pool)["ready_pids"]
    launcher, results = launch(WhoAmIExp())
    assert launcher.warm_ranks == 1
    pids = {r["rank"]: r["pid"] for r in results}
    assert pids[0] == warm and pids[1] != warm, "rank 0 warm, rank 1 started for the run"
    for r in results:  # torchrun's rank environment, warm rank or fresh one alike
        assert r["env"] == {
            "OMP_NUM_THREADS": "1",
            "GROUP_RANK": "0",
            "GROUP_WORLD_SIZE": "1",
            "ROLE_RANK": str(r["rank"]),
            "ROLE_WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        }, r
        assert r["torch_threads"] == 1
    assert eventually(lambda: full(pool, 1)), status(pool)


def test_torchrun_defaults_give_way_to_the_users_values(monkeypatch):
    from tinyexp_core.launchers.runtime import thread_env_defaults, torchrun_env_defaults

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    defaults = torchrun_env_defaults(num_threads=2, group_rank=1, num_groups=2, rank=3,
                                     world_size=4)  # fmt: skip
    assert defaults["OMP_NUM_THREADS"] == "2" and defaults["GROUP_RANK"] == "1"
    assert defaults["ROLE_RANK"] == "3" and defaults["GROUP_WORLD_SIZE"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert torchrun_env_defaults(num_threads=2, group_rank=0, num_groups=1, rank=0,
                                 world_size=1)["OMP_NUM_THREADS"] == "7"  # fmt: skip
    assert thread_env_defaults(2) == {"OMP_NUM_THREADS": "7"}


def test_a_module_the_pool_never_imported_runs_in_warm_ranks(pool, tmp_path, monkeypatch):
    """The driver's import path reaches a rank that started before the run (PYTHONPATH is
    applied before the experiment is unpickled): a user's own model module works."""
    (tmp_path / "my_team_model.py").write_text(
        textwrap.dedent(
            """
            import os
            from tinyexp_core.config.experiment import TinyExp

            class Exp(TinyExp):
                exp_name: str = "my_team_model"

                def train(self):
                    return {"pid": os.getpid(), "module": __file__}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from my_team_model import Exp

    warm = set(status(pool)["ready_pids"])
    launcher, results = launch(Exp())
    assert launcher.warm_ranks == 2
    assert {r["pid"] for r in results} == warm
    assert all(r["module"] == str(tmp_path / "my_team_model.py") for r in results)


def test_warm_ranks_that_imported_other_tinyexp_code_are_not_used(pool, monkeypatch):
    """tinyexp changed after the pool warmed up (as seen by the driver: its fingerprint
    differs): the run starts its own ranks, says why, and the pool replaces the old ones."""
    warm = set(status(pool)["ready_pids"])
    monkeypatch.setattr(ray_pool, "code_fingerprint", lambda: "edited-since")
    lines: list[str] = []
    launcher = RayLauncher(RayLaunchSpec(num_workers=2), log_callback=lines.append)
    results = launcher.run(WhoAmIExp())
    assert launcher.warm_ranks == 0
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert not {r["pid"] for r in results} & warm, "no rank ran in an old warm process"
    why = [line for line in lines if line.startswith("warm ranks started before tinyexp")]
    assert len(why) == 1 and "2 of 2" in why[0] and "edited-since" in why[0], lines
    assert not any(line.startswith("warm ranks: ") for line in lines), lines
    assert eventually(lambda: not any(alive(p) for p in warm), 30), "old warm ranks killed"
    assert eventually(lambda: full(pool, 2)), status(pool)
    monkeypatch.undo()  # the replacements imported the code the driver has: they serve
    fresh = set(status(pool)["ready_pids"])
    launcher, results = launch(WhoAmIExp())
    assert launcher.warm_ranks == 2 and {r["pid"] for r in results} == fresh


class _NoFingerprint:
    """A rank of a pool from before fingerprints: no `code_fingerprint` method."""

    def pid(self) -> int:
        return os.getpid()


class _Fingerprint(_NoFingerprint):
    def __init__(self, fingerprint: str) -> None:
        self._fp = fingerprint

    def code_fingerprint(self) -> str:
        return self._fp


def test_keep_current_keeps_only_ranks_with_the_drivers_fingerprint(ray_cluster):
    from tinyexp_core.services.code_fingerprint import code_fingerprint

    def actor(cls, *args):
        return ray_cluster.remote(num_cpus=0)(cls).remote(*args)

    same, other, old = (actor(_Fingerprint, code_fingerprint()), actor(_Fingerprint, "x"),
                        actor(_NoFingerprint))  # fmt: skip
    pids = ray_cluster.get([a.pid.remote() for a in (same, other, old)], timeout=60)
    keep, why = ray_pool.keep_current([same, other, old])
    assert keep == [same]
    assert why.startswith("warm ranks started before tinyexp changed: not used; 2 of 3")
    assert "none, x" in why and "no fingerprint" in why, why
    assert alive(pids[0]) and eventually(lambda: not alive(pids[1]) and not alive(pids[2]), 30)
    assert ray_pool.keep_current([same]) == ([same], "") and ray_pool.keep_current([]) == ([], "")
    ray_cluster.kill(same, no_restart=True)


def test_a_failed_run_gives_its_warm_ranks_back_to_be_replaced(pool):
    warm = set(status(pool)["ready_pids"])
    launcher = RayLauncher(RayLaunchSpec(num_workers=2))
    with pytest.raises(WorkerFailedError, match="rank 1"):
        launcher.run(FailingExp())
    assert launcher.warm_ranks == 2
    assert eventually(lambda: not any(alive(p) for p in warm), 30)
    assert eventually(lambda: full(pool, 2)), status(pool)


def test_ranks_taken_by_a_driver_that_died_are_killed_on_the_next_take(pool):
    """A driver killed before its `release` never gives its warm ranks back: the pool kills
    them once it sees the driver's pid gone (the token starts with it)."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    (actor,) = ray_pool.take(pool, 1, f"{gone.pid}-0")
    pid = ray_cluster_get(actor.pid.remote())
    assert alive(pid)
    assert ray_pool.take(pool, 0, ray_pool.run_token()) == []  # any later call reaps
    assert eventually(lambda: not alive(pid), 30), "the orphaned warm rank was not killed"
    assert status(pool)["lent"] == 0
    left = status(pool)
    assert left["ready"] + left["starting"] == 1, left  # refilled by the next release only


def ray_cluster_get(ref):
    import ray

    return ray.get(ref, timeout=60)


@pytest.mark.parametrize(
    ("spec", "warm"),
    [
        (RayLaunchSpec(), True),
        (RayLaunchSpec(runtime_env={"env_vars": {"A": "1"}}), True),
        (RayLaunchSpec(num_gpus_per_worker=1), False),  # Ray assigns a GPU at actor start
        (RayLaunchSpec(runtime_env={"pip": ["six"]}), False),  # an environment of its own
        (RayLaunchSpec(runtime_env={"working_dir": "."}), False),
    ],
)
def test_only_what_a_started_process_can_serve_takes_warm_ranks(spec, warm):
    assert RayLauncher(spec)._can_use_warm_ranks() is warm


@pytest.mark.parametrize(("cpus", "size"), [(0, 0), (1, 1), (2, 2), (4, 4), (64, 4)])
def test_default_size_is_one_per_cpu_capped(cpus, size):
    assert ray_pool.default_size(cpus) == size
