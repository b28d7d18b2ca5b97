"""Item 1: a DDP rank killed mid-epoch fails the step quickly and names the rank and cause;
nothing is left running; a hung rank fails the job through the collective timeout."""

from __future__ import annotations

import time

import dagster as dg
import pytest

from tests.reliability.exps import HungRankExp, PeerDiesExp
from tests.reliability.support import (
    HOOKS,
    KillRankWhenRunning,
    alive_launcher_actors,
    events,
    new_placement_groups,
    pid_alive,
    placement_group_states,
    prepared_dataset,
    redis_client,
    resources,
    step_errors,
    train_config,
    trained_model,
)
from tests.waiting import eventually
from tinyexp_core.config.exceptions import WorkerFailedError
from tinyexp_core.config.factory import build_exp
from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec
from tinyexp_core.progress import ACTIVE_RUNS_KEY, read_run


def test_sigkill_of_one_rank_fails_the_step_and_leaves_nothing(
    ray_cluster, redis_url, storage, instance
):
    killer = KillRankWhenRunning(rank=1)
    HOOKS.on_started = killer
    pgs_before = placement_group_states()
    result = dg.materialize(
        [prepared_dataset, trained_model],
        instance=instance,
        resources=resources(storage, redis_url),
        run_config=train_config(["train_cfg.num_epochs=30"]),
        raise_on_error=False,
    )
    assert not result.success
    assert killer.errors == []
    # The RetryPolicy retries once; the hook kills rank 1 in both attempts, mid-epoch 0.
    assert len(killer.kills) == 2, killer.kills
    for kill in killer.kills:
        assert kill["run"]["status"] == "running" and kill["run"].get("epoch", "0") == "0"

    # Each attempt fails well within 60 s of its kill, naming rank 1 and the cause.
    ends = events(
        instance,
        result.run_id,
        dg.DagsterEventType.STEP_UP_FOR_RETRY,
        dg.DagsterEventType.STEP_FAILURE,
    )
    assert [e.step_key for e in ends] == ["mnist__trained_model", "mnist__trained_model"]
    delays = [end.timestamp - kill["time"] for end, kill in zip(ends, killer.kills, strict=True)]
    assert all(0 < d < 60 for d in delays), delays
    print(f"timing: kill -> step failure per attempt {[round(d, 1) for d in delays]} s")
    for message in step_errors(instance, result.run_id):
        assert "worker rank 1 failed" in message, message
        assert "worker process died" in message, message

    client = redis_client(redis_url)
    try:
        run = read_run(client, result.run_id)
        assert run["status"] == "failed", (run["status"], run.get("error"), run)
        assert "rank 1" in run["error"], run
        assert not client.sismember(ACTIVE_RUNS_KEY, result.run_id)
        assert client.ttl(f"tinyexp:run:{result.run_id}") > 0
    finally:
        client.close()

    # Nothing of either attempt is left: actors, placement groups, processes.
    assert eventually(lambda: not alive_launcher_actors()), alive_launcher_actors()
    new = new_placement_groups(pgs_before)
    assert len(new) == 2 and set(new.values()) == {"REMOVED"}, new
    pids = [pid for kill in killer.kills for pid in kill["pids"]]
    assert len(set(pids)) == 4
    assert eventually(lambda: not any(pid_alive(p) for p in pids)), [
        p for p in pids if pid_alive(p)
    ]


@pytest.mark.timeout(120)
def test_hung_rank_fails_the_job_through_the_collective_timeout(ray_cluster):
    pgs_before = placement_group_states()
    launcher = RayLauncher(RayLaunchSpec(num_workers=2, num_cpus_per_worker=1))
    exp = build_exp(HungRankExp, ["accelerator_cfg.collective_timeout_s=5"])
    started = time.perf_counter()
    with pytest.raises(WorkerFailedError) as info:
        launcher.run(exp)
    elapsed = time.perf_counter() - started
    # Rank 1 sleeps 600 s; rank 0 gives up after the 5 s collective timeout.
    assert elapsed < 30, elapsed
    print(f"timing: hung rank -> WorkerFailedError in {elapsed:.1f} s (collective timeout 5 s)")
    assert info.value.rank == 0, info.value
    assert "all_reduce gave up after" in info.value.cause and "timeout 5 s" in info.value.cause
    assert eventually(lambda: not alive_launcher_actors()), alive_launcher_actors()
    assert set(new_placement_groups(pgs_before).values()) == {"REMOVED"}
    assert eventually(lambda: not any(pid_alive(p) for p in launcher.actor_pids))


def test_the_rank_that_died_is_named_even_when_a_peer_fails_first(ray_cluster):
    launcher = RayLauncher(RayLaunchSpec(num_workers=2, num_cpus_per_worker=1))
    with pytest.raises(WorkerFailedError) as info:
        launcher.run(PeerDiesExp())
    # Rank 0's error reached the driver first, but rank 1's death is the cause.
    assert info.value.rank == 1, info.value
    assert "worker process died" in info.value.cause
    assert eventually(lambda: not alive_launcher_actors()), alive_launcher_actors()
