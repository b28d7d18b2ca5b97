"""Must-show 3: a bad training config fails `trained_model` before training starts, once
(no retry), with a message naming the problem, and leaves the storage root untouched.

The whole `mnist_training_pipeline` selection runs against the session's storage root, which holds
a prepared dataset, a training run and a promoted model: `prepared_dataset` reuses its
directory as it is, and nothing else is written, so every file keeps its mtime and size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.dagster.support import (
    PIPELINE,
    TINY_OVERRIDES,
    Pipeline,
    materializations,
    step_failures,
)
from tinyexp_core.progress import read_run
from tinyexp_core.services.redis_client import make_client
from tinyexp_dagster.resources import RayDDPResource


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: relative path -> (mtime in ns, size)."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("train", "expected", "ray"),
    [
        pytest.param(
            {"overrides": [*TINY_OVERRIDES, "optimizer_cfg.lrr=1"]},
            ["unknown config key 'optimizer_cfg.lrr'", "did you mean 'optimizer_cfg.lr'"],
            None,
            id="unknown-key",
        ),
        pytest.param(
            {"overrides": ["train_cfg.num_epochs=abc"]},
            ["'train_cfg.num_epochs'", "expected int", "'abc'"],
            None,
            id="wrong-type",
        ),
        # A nested config's validate() check fails the step before Ray.
        pytest.param(
            {"overrides": ["checkpoint_cfg.keep_last_n=0"]},
            ["'checkpoint_cfg.keep_last_n'", "got 0", "an integer >= 1"],
            None,
            id="validate-check",
        ),
        pytest.param(
            {"overrides": ["progress_cfg.url=http://:hunter2@127.0.0.1:6399/0"]},
            ["'progress_cfg.url'", "'http://:***@127.0.0.1:6399/0'", "a Redis URL"],
            None,
            id="bad-url-redacted",
        ),
        pytest.param(
            {"num_workers": 64},
            ["64 CPU", "64 workers"],
            None,
            id="too-many-workers",
        ),
        # The orchestrator decides the world size; an override may not silently lose to it.
        pytest.param(
            {"overrides": [*TINY_OVERRIDES, "num_workers=3"]},
            ["config key 'num_workers': got '3'", "the orchestrator sets it"],
            None,
            id="orchestrated-key-override",
        ),
        # An existing cluster (here the session's Ray, by address) is sized by asking it.
        pytest.param(
            {"num_workers": 64},
            ["64 CPU", "Ray cluster has 2"],
            RayDDPResource(address="auto", num_workers=2),
            id="too-many-workers-for-cluster",
        ),
    ],
)
def test_bad_config_fails_before_training(
    pipeline: Pipeline,
    train: dict[str, Any],
    expected: list[str],
    ray: RayDDPResource | None,
) -> None:
    before = snapshot(pipeline.storage_root)
    assert {path.split("/")[0] for path in before} >= {"datasets", "runs", "models"}

    result = pipeline.materialize(
        PIPELINE,
        raise_on_error=False,
        resources={"ray": ray} if ray else None,
        trained_model=train,
    )

    assert not result.success
    failures = step_failures(result, "trained_model")
    assert len(failures) == 1
    attempts = [
        e
        for e in result.all_events
        if e.step_key == "mnist__trained_model" and (e.is_step_start or e.is_step_restarted)
    ]
    assert len(attempts) == 1, "the asset's RetryPolicy must not retry a config failure"
    assert not [e for e in result.all_events if e.is_step_up_for_retry]
    data = failures[0].step_failure_data
    message = data.error.message if data.error else ""
    description = data.user_failure_data.description if data.user_failure_data else ""
    assert description.startswith("invalid configuration:"), (description, message)
    for fragment in expected:
        assert fragment in description, (fragment, description)
    assert "hunter2" not in description + message
    # Nothing downstream ran, no rank reported progress, nothing was written or replaced.
    assert list(materializations(result)) == ["prepared_dataset"]
    assert read_run(make_client(pipeline.redis_url), result.run_id) == {}
    assert snapshot(pipeline.storage_root) == before
