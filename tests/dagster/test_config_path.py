"""One config path (issue 21, must-show 3): a sweep grid float reaches the optimizer
bit-identical, and a training run parses each of its overrides exactly once (typed values,
the sweep trial's and the launchpad's `exp`, are never rendered and parsed back).

One trial of a real sweep on real Ray, Redis and Dagster; the dataset is materialized in a
run of its own, so the counted run is the training step alone."""

from __future__ import annotations

import collections
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.test_utils import instance_for_test

import tinyexp_core.config.factory
import tinyexp_core.config.overrides
from tinyexp_core.checkpoint import load_checkpoint
from tinyexp_dagster import pipeline_defs
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    RunScopedJSONIOManager,
    StorageResource,
)

NAME = "cfgpath"
LR = 0.00012345678901234  # `%g` makes it 0.000123457; repr reads back as the same float
WEIGHT_DECAY = 1.2345678901234567e-05  # set through the typed `exp` config
PIPELINE_OVERRIDES = ["train_cfg.num_epochs=1"]
RUN_OVERRIDES = ["seed=3", "checkpoint_cfg.keep_last_n=2"]


def key(asset: str) -> dg.AssetKey:
    return dg.AssetKey([NAME, asset])


def test_grid_float_reaches_the_optimizer_bit_identical_and_each_override_is_parsed_once(
    ray_cluster, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defs = pipeline_defs(
        NAME,
        "tinyexp_core.examples.mnist_exp:Exp",
        PIPELINE_OVERRIDES,
        sweep={"optimizer_cfg.lr": [LR]},
    )
    [training] = [a for a in defs.assets if key("trained_model") in a.keys]
    [trial] = training.partitions_def.get_partition_keys()
    storage = StorageResource(root=str(tmp_path / "storage"))
    resources = {
        "ray": RayDDPResource(num_workers=1, num_cpus_per_worker=1),
        "redis": RedisProgressResource(url=redis_url),
        "storage": storage,
        "io_manager": RunScopedJSONIOManager(storage=storage),
    }
    assets = list(defs.assets)
    config = {
        "exp": {"optimizer_cfg": {"weight_decay": WEIGHT_DECAY}},
        "overrides": RUN_OVERRIDES,
    }
    with instance_for_test() as instance:
        prepared = dg.materialize(
            assets, selection=[key("prepared_dataset")], instance=instance, resources=resources
        )
        assert prepared.success
        # Every parse in this process from here on: the training step's (the ranks get
        # the built experiment). Both names of the function are counted.
        calls: collections.Counter[str] = collections.Counter()
        parse = tinyexp_core.config.overrides.parse_override

        def counted(text: str):
            calls[text] += 1
            return parse(text)

        monkeypatch.setattr(tinyexp_core.config.overrides, "parse_override", counted)
        monkeypatch.setattr(tinyexp_core.config.factory, "parse_override", counted)
        result = dg.materialize(
            assets,
            selection=[key("trained_model")],
            partition_key=trial,
            instance=instance,
            resources=resources,
            run_config={"ops": {f"{NAME}__trained_model": {"config": config}}},
        )
        monkeypatch.undo()
        assert result.success
    assert dict(calls) == {o: 1 for o in [*PIPELINE_OVERRIDES, *RUN_OVERRIDES]}

    [mat] = result.asset_materializations_for_node(f"{NAME}__trained_model")
    run_dir = Path(mat.metadata["run_dir"].value)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # the optimizer was built with it (StepLR keeps the lr it started from)...
    started_with = checkpoint["optimizer"]["param_groups"][0]["initial_lr"]
    assert started_with.hex() == LR.hex()
    weight_decay = checkpoint["optimizer"]["param_groups"][0]["weight_decay"]
    assert weight_decay.hex() == WEIGHT_DECAY.hex()
    # ...and the run's record says so: the checkpoint's config, config.yaml, the metadata
    on_disk = yaml.safe_load((run_dir / "config.yaml").read_text())
    for record in (checkpoint["config"], on_disk, mat.metadata["effective_config"].value):
        assert record["optimizer_cfg"]["lr"].hex() == LR.hex()
        assert record["optimizer_cfg"]["weight_decay"].hex() == WEIGHT_DECAY.hex()
    assert f"optimizer_cfg.lr={LR!r}" in mat.metadata["overrides"].value
    assert trial == f"lr={LR!r}", "a trial key that %g would round keeps every digit"
