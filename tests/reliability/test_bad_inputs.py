"""Item 7: bad inputs are rejected before compute, with a message that names what was wrong,
and nothing in the storage root is overwritten.

Every case runs against one storage root that already holds a finished run (checkpoints,
a promoted model, the dataset); its files (path, size, mtime) are compared before and
after. Configuration errors fail the step once (no retry): retrying cannot fix them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import dagster as dg
import pytest

from tests.reliability.support import (
    ENV_REDIS,
    ENV_STORAGE,
    REDIS_PASSWORD,
    REPO_ROOT,
    copy_prepared,
    events,
    new_placement_groups,
    placement_group_states,
    prepared_dataset,
    redis_client,
    resources,
    snapshot,
    step_errors,
    train_config,
    trained_model,
    training_pipeline_job,
)
from tinyexp_core.progress import read_run


@dataclass
class Case:
    overrides: list[str] = field(default_factory=list)  # trained_model's
    train: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields
    dataset: list[str] = field(default_factory=list)  # prepared_dataset's overrides
    redis: str = "good"  # good | malformed | wrong-password
    how: str = "materialize"  # materialize | reexecute | subprocess
    step: str = "mnist__trained_model"
    expect: str = ""


CASES = {
    "unknown override key": Case(
        overrides=["train_cfg.num_epoch=2"],
        expect="unknown config key 'train_cfg.num_epoch'; did you mean 'train_cfg.num_epochs'?",
    ),
    "wrong type": Case(
        overrides=["train_cfg.num_epochs=two"],
        expect="config key 'train_cfg.num_epochs': expected int, got 'two'",
    ),
    "negative learning rate": Case(
        overrides=["optimizer_cfg.lr=-0.01"],
        expect="config key 'optimizer_cfg.lr': got -0.01, allowed: a finite number > 0",
    ),
    "zero learning rate": Case(
        overrides=["optimizer_cfg.lr=0"],
        expect="config key 'optimizer_cfg.lr': got 0.0, allowed: a finite number > 0",
    ),
    "zero batch size": Case(
        overrides=["data_cfg.batch_size=0"],
        expect="config key 'data_cfg.batch_size': got 0, allowed: an integer >= 1",
    ),
    "negative batch size": Case(
        overrides=["data_cfg.batch_size=-8"],
        expect="config key 'data_cfg.batch_size': got -8, allowed: an integer >= 1",
    ),
    "zero epochs": Case(
        overrides=["train_cfg.num_epochs=0"],
        expect="config key 'train_cfg.num_epochs': got 0, allowed: an integer >= 1",
    ),
    "negative epochs": Case(
        overrides=["train_cfg.num_epochs=-3"],
        expect="config key 'train_cfg.num_epochs': got -3, allowed: an integer >= 1",
    ),
    "zero workers": Case(
        train={"num_workers": 0},
        expect="config key 'num_workers': got 0, allowed: an integer >= 1",
    ),
    "missing dataset files": Case(
        dataset=["data_cfg.source=mnist", "data_cfg.root=/nonexistent"],
        step="mnist__prepared_dataset",
        expect="invalid dataset: dataset file missing: /nonexistent/train-images-idx3-ubyte",
    ),
    "malformed Redis URL": Case(
        redis="malformed",
        expect="invalid Redis URL 'redis://127.0.0.1:notaport/0': not a valid URL",
    ),
    "wrong Redis password": Case(
        redis="wrong-password",
        expect="authentication failed",
    ),
    "checkpoint of another model shape on resume": Case(
        overrides=["module_cfg.num_classes=12", "train_cfg.num_epochs=3"],
        how="reexecute",
        expect="does not fit the model: tensor 'fc2.weight': checkpoint shape (10, 128), "
        "model shape (12, 128)",
    ),
    "unreachable Ray address": Case(
        how="subprocess",
        expect="cannot connect to Ray at '127.0.0.1:1'",
    ),
}


@pytest.fixture(scope="module")
def populated(ray_cluster, redis_url, digits_prepared, tmp_path_factory):
    """A Dagster instance and a storage root holding one finished 2-epoch pipeline run."""
    root = tmp_path_factory.mktemp("bad-inputs")
    storage = root / "storage"
    copy_prepared(digits_prepared, storage)
    home = root / "dagster_home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as patch, dg.instance_for_test(temp_dir=str(home)) as inst:
        patch.setenv(ENV_STORAGE, str(storage))
        patch.setenv(ENV_REDIS, redis_url)
        parent = dg.execute_job(
            dg.reconstructable(training_pipeline_job),
            inst,
            run_config=train_config(["train_cfg.num_epochs=2"]),
        )
        assert parent.success
        yield SimpleNamespace(instance=inst, storage=storage, parent=parent.run_id, root=root)


_UNREACHABLE = """
import json, sys, time
import dagster as dg
from tests.reliability.support import resources, step_errors, train_config
from tests.reliability.support import prepared_dataset, trained_model

storage, redis_url, home = sys.argv[1:4]
with dg.instance_for_test(temp_dir=home) as instance:
    started = time.monotonic()
    result = dg.materialize(
        [prepared_dataset, trained_model],
        instance=instance,
        resources=resources(storage, redis_url, address="127.0.0.1:1", connect_timeout_s=3.0),
        run_config=train_config(),
        raise_on_error=False,
    )
    print(json.dumps({
        "success": result.success,
        "elapsed_s": time.monotonic() - started,
        "errors": step_errors(instance, result.run_id),
        "ray_initialized": __import__("ray").is_initialized(),
    }))
"""


def _unreachable_ray(populated, redis_url: str) -> dict[str, Any]:
    """In a fresh process: here the session's Ray is connected and would be reused."""
    home = populated.root / "dagster_home_unreachable"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", _UNREACHABLE, str(populated.storage), redis_url, str(home)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO_ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _redis_url(case: Case, redis_url: str, password_redis: str) -> str:
    if case.redis == "malformed":
        return "redis://127.0.0.1:notaport/0"
    if case.redis == "wrong-password":
        return password_redis.replace(REDIS_PASSWORD, "not-the-password")
    return redis_url


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_rejected_before_compute(name, populated, redis_url, password_redis):
    case = CASES[name]
    instance, storage = populated.instance, populated.storage
    # A rejected resume still logs the attempt in the run's log; nothing else may change.
    logs = f"runs/{populated.parent}/log"
    before = snapshot(storage, exclude=[logs] if case.how == "reexecute" else [])
    pgs_before = placement_group_states()
    config = train_config(case.overrides, **case.train)
    if case.dataset:
        config["ops"]["mnist__prepared_dataset"] = {"config": {"overrides": case.dataset}}

    if case.how == "subprocess":
        outcome = _unreachable_ray(populated, redis_url)
        assert not outcome["success"] and not outcome["ray_initialized"]
        # RayConnectionError may be transient (a head restarting): one retry, both quick.
        assert len(outcome["errors"]) == 2 and outcome["elapsed_s"] < 30, outcome
        assert all(case.expect in e and "ConnectionRefused" in e for e in outcome["errors"])
        assert snapshot(storage) == before
        print(f"timing: {name} -> 2 attempts rejected in {outcome['elapsed_s']:.1f} s")
        return

    started = time.monotonic()
    if case.how == "reexecute":
        result = dg.execute_job(
            dg.reconstructable(training_pipeline_job),
            instance,
            run_config=config,
            reexecution_options=dg.ReexecutionOptions(
                parent_run_id=populated.parent, step_selection=["mnist__trained_model"]
            ),
        )
    else:
        result = dg.materialize(
            [prepared_dataset, trained_model],
            instance=instance,
            resources=resources(storage, _redis_url(case, redis_url, password_redis)),
            run_config=config,
            raise_on_error=False,
        )
    elapsed = time.monotonic() - started
    assert not result.success
    print(f"timing: {name} -> rejected in {elapsed:.2f} s")

    (error,) = step_errors(instance, result.run_id)  # failed once: not retried
    assert case.expect in error, error
    failed = events(instance, result.run_id, dg.DagsterEventType.STEP_FAILURE)
    assert [e.step_key for e in failed] == [case.step]
    assert snapshot(storage, exclude=[logs] if case.how == "reexecute" else []) == before
    assert not (storage / "runs" / result.run_id).exists()
    client = redis_client(redis_url)
    try:
        progress = read_run(client, result.run_id)
    finally:
        client.close()

    if case.how == "reexecute":
        # The ranks refused the checkpoint before the first step: no epoch ran.
        assert "worker rank" in error and "CheckpointMismatchError" in error
        assert progress.get("status") == "failed" and "epoch" not in progress, progress
        assert set(new_placement_groups(pgs_before).values()) == {"REMOVED"}
        assert elapsed < 60
    else:
        assert progress == {}, "no progress key: the run never reached the workers"
        assert new_placement_groups(pgs_before) == {}, "Ray was never asked for anything"
        assert elapsed < 15, elapsed
    if case.redis == "wrong-password":
        assert "not-the-password" not in error and "redis://:***@127.0.0.1" in error
