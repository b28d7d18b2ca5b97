"""The session's materialized pipeline, shared by the Dagster tests.

Training dominates the cost of these tests (Ray actors start, import torch, train), so the
default pipeline is materialized once per session, on 1 epoch, into a real Dagster instance
(SQLite in a temporary DAGSTER_HOME) and a temporary storage root. Tests that run more steps
do so in that instance and leave it consistent: every asset fresh, every file they damage
restored. `Pipeline.latest` reads the current state, `Pipeline.result` the fixture's run.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest
from dagster._core.test_utils import instance_for_test

from tests.dagster.support import (
    ASSET_CHECKS,
    ASSETS,
    PIPELINE,
    Pipeline,
    dagster_resources,
    run_config,
)


@pytest.fixture(scope="session")
def pipeline(
    ray_cluster, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    """`mnist_training_pipeline`'s assets and checks, materialized once on 1 epoch."""
    storage_root = tmp_path_factory.mktemp("pipeline-storage")
    resources = dagster_resources(storage_root, redis_url)
    with instance_for_test() as instance:
        result = dg.materialize(
            [*ASSETS, *ASSET_CHECKS],
            instance=instance,
            resources=resources,
            run_config=run_config(PIPELINE),
        )
        yield Pipeline(instance, storage_root, resources, redis_url, result)
