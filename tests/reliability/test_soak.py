"""Item 9: 20 consecutive `mnist_retrain_job` runs in one Dagster instance leave no growing number
of processes, open files or live Redis keys (finished runs' keys expire).

The runs execute in this process on the session's Ray (as a Dagster run worker that keeps
its Ray connection would), 2 ranks x 1 epoch each. Counts are sampled after every run and
compared between the end of the warm-up and the end of the soak. The data is a
600-image subset of digits, so a run costs little more than its Ray actors' start.
"""

from __future__ import annotations

import time

import psutil
import pytest

from tests.reliability.support import (
    alive_launcher_actors,
    build_defs,
    eventually,
    new_placement_groups,
    placement_group_states,
    prepared_dataset,
    redis_client,
    train_config,
)
from tinyexp_core.progress import ACTIVE_RUNS_KEY, DEFAULT_TTL_S, EVENTS_STREAM, run_key

NUM_RUNS = 20
WARMUP = 5


def _processes() -> int:
    """This process's descendants: Ray's GCS, raylet, agents and worker processes."""
    return len(psutil.Process().children(recursive=True))


@pytest.mark.timeout(900)
def test_twenty_retrain_runs_leak_nothing(ray_cluster, redis_url, storage, instance):
    import dagster as dg

    defs = build_defs(storage, redis_url)
    # A 600-image subset of digits: the runs are about leaks, not accuracy.
    dg.materialize(
        [prepared_dataset],
        instance=instance,
        resources=defs.resources,
        run_config={
            "ops": {
                "mnist__prepared_dataset": {"config": {"overrides": ["data_cfg.num_samples=600"]}}
            }
        },
    )
    job = defs.resolve_job_def("mnist_retrain_job")
    config = train_config(["train_cfg.num_epochs=1"])
    config["ops"]["mnist__model_evaluation"] = {"config": {"threshold": 0.0}}
    client = redis_client(redis_url)
    pgs_before = placement_group_states()
    me = psutil.Process()
    samples, run_ids = [], []
    started = time.monotonic()
    try:
        for _ in range(NUM_RUNS):
            result = job.execute_in_process(instance=instance, run_config=config)
            assert result.success
            run_ids.append(result.run_id)
            # Between runs nothing of the last one may still be running.
            assert eventually(lambda: not alive_launcher_actors(), timeout_s=15)
            assert not client.smembers(ACTIVE_RUNS_KEY) & set(run_ids)
            samples.append(
                {
                    "processes": _processes(),
                    "fds": me.num_fds(),
                    "threads": me.num_threads(),
                    "rss_mb": me.memory_info().rss / 2**20,
                    "keys": _own_keys(client, run_ids),
                }
            )
        elapsed = time.monotonic() - started

        warm, end = samples[WARMUP - 1], samples[-1]
        report = f"{elapsed:.0f} s; samples: {samples}"
        # Ray keeps a small pool of idle workers; what matters is no growth per run.
        assert end["processes"] <= warm["processes"] + 2, report
        assert max(s["processes"] for s in samples[WARMUP:]) <= warm["processes"] + 3, report
        assert end["fds"] <= warm["fds"] + 8, report
        assert end["threads"] <= warm["threads"] + 4, report

        # Redis: nothing active; every run's key is there until its TTL; no other keys grew.
        assert not client.smembers(ACTIVE_RUNS_KEY) & set(run_ids)
        for run_id in run_ids:
            assert client.hget(run_key(run_id), "status") == "succeeded"
            assert 0 < client.ttl(run_key(run_id)) <= DEFAULT_TTL_S
        other_keys = [k for k in client.scan_iter("tinyexp:*") if not k.startswith("tinyexp:run:")]
        assert set(other_keys) <= {EVENTS_STREAM, ACTIVE_RUNS_KEY}, other_keys
        assert end["keys"] - warm["keys"] == NUM_RUNS - WARMUP, report  # one per run, expiring

        new = new_placement_groups(pgs_before)
        assert len(new) == NUM_RUNS and set(new.values()) == {"REMOVED"}
        print(f"soak: {NUM_RUNS} runs in {elapsed:.0f} s; first/warm/end {samples[0]} {warm} {end}")
    finally:
        client.close()


def _own_keys(client, run_ids: list[str]) -> int:
    """The project's keys, counting run hashes of this test's runs only: the Redis may be
    shared with other test sessions (CI's server on 6379), whose runs come and go."""
    prefix = "tinyexp:run:"
    mine = set(run_ids)
    keys = client.scan_iter("tinyexp:*", count=1000)
    return sum(1 for k in keys if not k.startswith(prefix) or k[len(prefix) :] in mine)
