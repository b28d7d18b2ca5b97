"""The run record states what ran: orchestration decided by the op config and the resources
(workers, accelerator, collective timeout, progress throttle and TTL) reaches `config.yaml`,
each checkpoint's `config` and the `effective_config` metadata as one set of values, and
the launch request is read back from the experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.test_utils import instance_for_test

from tests.dagster.support import materializations, prepared_dataset, trained_model
from tinyexp_core.checkpoint import load_checkpoint
from tinyexp_core.config.experiment import ProgressCfg
from tinyexp_core.config.orchestration import RunOverrides
from tinyexp_core.examples.mnist_exp import Exp
from tinyexp_core.progress import read_run, run_key
from tinyexp_core.services.redis_client import make_client
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    StallSettingsResource,
    StorageResource,
)

COLLECTIVE_TIMEOUT_S = 123.0  # the resource's, not the default 300
FINISHED_TTL_S = 4321  # the resource's, not the default 7 days
THROTTLE_S = 0.75


def _orchestration(config: dict[str, Any]) -> dict[str, Any]:
    """The orchestration part of an experiment config, as the record should state it."""
    return {
        "launcher": config["launcher"],
        "num_workers": config["num_workers"],
        "num_cpus_per_worker": config["num_cpus_per_worker"],
        "num_gpus_per_worker": config["num_gpus_per_worker"],
        "ray_address": config["ray_address"],
        "accelerator": config["accelerator_cfg"]["accelerator"],
        "collective_timeout_s": config["accelerator_cfg"]["collective_timeout_s"],
        "throttle_s": config["progress_cfg"]["throttle_s"],
        "finished_ttl_s": config["progress_cfg"]["finished_ttl_s"],
        "run_id": config["run_id"],
        "output_root": config["output_root"],
    }


@pytest.fixture(scope="module")
def one_worker_run(ray_cluster, redis_url, tmp_path_factory) -> dict[str, Any]:
    """prepared_dataset + trained_model on real Ray with non-default orchestration: 1 worker
    and the cpu accelerator from the op config, over a resource that says 2 and auto."""
    storage_root = tmp_path_factory.mktemp("record-storage")
    resources = {
        "ray": RayDDPResource(
            num_workers=2, num_cpus_per_worker=1, collective_timeout_s=COLLECTIVE_TIMEOUT_S
        ),
        "redis": RedisProgressResource(
            url=redis_url, throttle_s=THROTTLE_S, finished_ttl_s=FINISHED_TTL_S
        ),
        "storage": StorageResource(root=str(storage_root)),
        "stalls": StallSettingsResource(),
    }
    train = {"overrides": ["train_cfg.num_epochs=1"], "num_workers": 1, "accelerator": "cpu"}
    with instance_for_test() as instance:
        result = dg.materialize(
            [prepared_dataset, trained_model],
            instance=instance,
            resources=resources,
            run_config={"ops": {"mnist__trained_model": {"config": train}}},
        )
        assert result.success
        mat = materializations(result)["trained_model"]
        return {
            "run_id": result.run_id,
            "storage_root": storage_root,
            "metadata": {k: v.value for k, v in mat.metadata.items()},
            "redis_url": redis_url,
        }


def test_config_yaml_checkpoint_and_metadata_state_what_ran(one_worker_run) -> None:
    meta = one_worker_run["metadata"]
    run_dir = Path(meta["run_dir"])
    expected = {
        "launcher": "ray",
        "num_workers": 1,
        "num_cpus_per_worker": 1.0,
        "num_gpus_per_worker": 0.0,
        "ray_address": "",
        "accelerator": "cpu",
        "collective_timeout_s": COLLECTIVE_TIMEOUT_S,
        "throttle_s": THROTTLE_S,
        "finished_ttl_s": FINISHED_TTL_S,
        "run_id": one_worker_run["run_id"],
        "output_root": str(one_worker_run["storage_root"] / "runs"),
    }
    on_disk = yaml.safe_load((run_dir / "config.yaml").read_text())
    in_checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]
    assert _orchestration(on_disk) == expected
    assert _orchestration(in_checkpoint) == expected
    assert _orchestration(meta["effective_config"]) == expected
    # ...and it is what ran: one rank.
    assert meta["workers"] == meta["world_size"] == 1


def test_finished_run_key_expires_after_the_resources_ttl(one_worker_run) -> None:
    client = make_client(one_worker_run["redis_url"])
    run_id = one_worker_run["run_id"]
    assert read_run(client, run_id)["status"] == "succeeded"
    ttl = client.ttl(run_key(run_id))
    assert FINISHED_TTL_S - 120 < ttl <= FINISHED_TTL_S, ttl


def test_progress_cfg_throttle_and_ttl_reach_the_reporter(redis_url) -> None:
    """Two step reports inside one throttle window: only the first is written."""
    client = make_client(redis_url)
    run_id = "record-throttle-test"
    client.delete(run_key(run_id))
    cfg = ProgressCfg(url=redis_url, throttle_s=3600.0, finished_ttl_s=77)
    reporter = cfg.build_reporter(run_id)
    try:
        reporter.start(num_epochs=1, num_steps=10)
        reporter.step(epoch=0, step=0, loss=1.0, lr=0.1, samples_per_s=1.0)
        reporter.step(epoch=0, step=1, loss=0.5, lr=0.1, samples_per_s=1.0)
        assert read_run(client, run_id)["step"] == "0"
        reporter.finish("succeeded")
    finally:
        reporter.close()
    assert 0 < client.ttl(run_key(run_id)) <= 77
    client.delete(run_key(run_id))


def test_the_launch_request_is_read_from_the_experiment() -> None:
    ray = RayDDPResource(num_workers=2, num_cpus_per_worker=1.0, accelerator="ddp")
    forced = ray.forced(num_workers=1, collective_timeout_s=9.0)
    assert forced == {
        "launcher": "ray",
        "num_workers": 1,
        "num_cpus_per_worker": 1.0,
        "num_gpus_per_worker": 0.0,
        "ray_address": ray.resolved_address(),
        "accelerator_cfg.accelerator": "ddp",
        "accelerator_cfg.collective_timeout_s": 9.0,
    }
    exp = RunOverrides().build(Exp, forced)
    spec = ray.spec(exp, env={"TINYEXP_ASSET": "trained_model"})
    assert (spec.num_workers, spec.num_cpus_per_worker, spec.num_gpus_per_worker) == (1, 1.0, 0.0)
    # The environment carries identity only: no config value travels beside the config.
    assert spec.env == {"TINYEXP_ASSET": "trained_model"}
    assert exp.accelerator_cfg.collective_timeout_s == 9.0


def test_an_override_of_an_orchestrated_key_is_refused() -> None:
    from tinyexp_dagster.assets.common import build_experiment

    with pytest.raises(dg.Failure) as info:
        build_experiment(Exp, ["num_workers=4"], {"num_workers": 1})
    assert "config key 'num_workers': got '4'" in info.value.description
    assert "the orchestrator sets it" in info.value.description
