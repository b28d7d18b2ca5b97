"""Item 5: a request that can never be satisfied fails at once with a clear error; a request
that does not fit a busy cluster waits `placement_timeout_s`, then fails clearly and
leaves no placement group behind."""

from __future__ import annotations

import time

import dagster as dg
import pytest

from tests.reliability.support import (
    alive_launcher_actors,
    events,
    new_placement_groups,
    placement_group_states,
    prepared_dataset,
    resources,
    step_errors,
    train_config,
    trained_model,
)
from tests.waiting import eventually


def _step_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    start = events(instance, run_id, dg.DagsterEventType.STEP_START)
    end = events(instance, run_id, dg.DagsterEventType.STEP_FAILURE)
    train_start = [e for e in start if e.step_key == "mnist__trained_model"][0]
    return end[-1].timestamp - train_start.timestamp


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"num_workers": 64}, "the job needs 64 CPU but the Ray cluster has 2 in total"),
        (
            {"num_workers": 2, "num_gpus_per_worker": 1.0},
            "the job needs 2 GPU but the Ray cluster has 0 in total",
        ),
    ],
    ids=["64-workers", "gpu-on-a-cpu-machine"],
)
def test_impossible_request_fails_fast(fields, expected, ray_cluster, redis_url, storage, instance):
    pgs_before = placement_group_states()
    result = dg.materialize(
        [prepared_dataset, trained_model],
        instance=instance,
        resources=resources(storage, redis_url),
        run_config=train_config(**fields),
        raise_on_error=False,
    )
    assert not result.success
    (error,) = step_errors(instance, result.run_id)  # one attempt: retrying cannot help
    assert expected in error, error
    seconds = _step_seconds(instance, result.run_id)
    assert seconds < 5
    print(f"timing: impossible request {fields} -> step failure in {seconds:.2f} s")
    assert new_placement_groups(pgs_before) == {}, "nothing was reserved"
    assert not (storage / "runs").exists()


@pytest.mark.timeout(120)
def test_busy_cluster_waits_for_the_timeout_then_fails_clearly(
    ray_cluster, redis_url, storage, instance
):
    from ray.util.placement_group import placement_group, remove_placement_group

    # Someone else holds both CPUs of the session's Ray.
    blocker = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    ray_cluster.get(blocker.ready(), timeout=30)
    pgs_before = placement_group_states()
    try:
        started = time.monotonic()
        result = dg.materialize(
            [prepared_dataset, trained_model],
            instance=instance,
            resources=resources(storage, redis_url, placement_timeout_s=3.0),
            run_config=train_config(),
            raise_on_error=False,
        )
        elapsed = time.monotonic() - started
        assert not result.success
        errors = step_errors(instance, result.run_id)
        # A busy cluster may free up, so the RetryPolicy's one retry is allowed to wait too.
        assert len(errors) == 2, errors
        for error in errors:
            assert "placement group of 2 x {'CPU': 1.0} not granted within 3 s" in error
            assert "cluster busy?" in error
        seconds = _step_seconds(instance, result.run_id)
        assert 6 <= seconds < 30, elapsed
        print(f"timing: busy cluster, 2 attempts x 3 s wait -> step failure in {seconds:.1f} s")

        # Both waiting groups were removed; the other party's group is untouched.
        new = new_placement_groups(pgs_before)
        assert len(new) == 2 and set(new.values()) == {"REMOVED"}, new
        assert placement_group_states()[blocker.id.hex()] == "CREATED"
        assert eventually(lambda: not alive_launcher_actors())
    finally:
        remove_placement_group(blocker)
