"""TinyExp 0.0.1's `mnist_exp`, import lines rewritten only, materialized through
`pipeline_defs` (issue 11, must-show 3): its `Exp` implements `run()` alone, so the pipeline
is one training asset that runs it on the Ray ranks, streams rank 0's log into the step log
and records the run's output directory, where 0.0.1 writes `<output_root>/Exp/log.txt`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.test_utils import instance_for_test

from tinyexp_core.exceptions import ConfigValueError
from tinyexp_dagster import pipeline_defs
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    RunScopedJSONIOManager,
    StorageResource,
)

from .conftest import PortedRelease
from .test_examples import _FAST_LOADERS, _write_mnist

NAME = "ported_mnist"
MODULE = "ported_mnist_exp"  # not `mnist_exp`: the project's own example is importable too


@pytest.fixture
def ported_mnist(
    tinyexp_001: PortedRelease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The rewritten `mnist_exp.py` as module `ported_mnist_exp` on sys.path (the Ray
    launcher ships the driver's sys.path to the ranks as PYTHONPATH)."""
    folder = tmp_path / "ported"
    folder.mkdir()
    source = (tinyexp_001.examples / "mnist_exp.py").read_text()
    (folder / f"{MODULE}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield f"{MODULE}:Exp"
    sys.modules.pop(MODULE, None)


def test_ported_mnist_is_one_training_asset_materialized_on_ray(
    ported_mnist: str, tmp_path: Path, ray_cluster, redis_url: str
) -> None:
    defs = pipeline_defs(NAME, ported_mnist)
    # 0.0.1's Exp has no prepare_data, train or evaluate: no dataset, checkpoint or
    # evaluation asset (whose steps would end in a raw NotImplementedError), no checks.
    keys = [k.to_user_string() for a in defs.assets for k in a.keys]
    assert keys == [f"{NAME}/trained_model"]
    assert not list(defs.asset_checks or [])
    assert {j.name for j in defs.jobs} == {f"{NAME}_training_pipeline", f"{NAME}_retrain_job"}
    # asking for what it lacks is one typed line at definition time, before Ray is touched
    with pytest.raises(ConfigValueError, match="metric_threshold") as refused:
        pipeline_defs(NAME, ported_mnist, metric_threshold=0.9)
    assert "evaluate()" in str(refused.value) and "\n" not in str(refused.value)

    data = _write_mnist(tmp_path / "data")  # 64 train / 32 test images: 2 steps per epoch
    storage = StorageResource(root=str(tmp_path / "storage"))
    resources = {
        "ray": RayDDPResource(num_workers=1, num_cpus_per_worker=1),
        "redis": RedisProgressResource(url=redis_url),
        "storage": storage,
        "io_manager": RunScopedJSONIOManager(storage=storage),
    }
    # 0.0.1 hard-codes 3 epochs; its own knobs are data root, batch size and loader workers.
    config = {
        "accelerator": "cpu",  # 0.0.1's AcceleratorCfg knows cpu and ddp, not auto
        "exp": {"dataloader_cfg": {"data_root": str(data)}},
        "overrides": _FAST_LOADERS,
    }
    with instance_for_test() as instance:
        result = dg.materialize(
            list(defs.assets),
            instance=instance,
            resources=resources,
            run_config={"ops": {f"{NAME}__trained_model": {"config": config}}},
            raise_on_error=False,
        )
        logs = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
        failures = [e.step_failure_data.error for e in result.all_events if e.is_step_failure]
        assert result.success, "\n".join(f.to_string() for f in failures)[-4000:]
        assert "NotImplementedError" not in logs
        # rank 0's print (accelerator.print) and loguru lines reach the step log
        assert "device cpu is used!" in logs
        assert "-------- Configurations --------" in logs
        assert logs.count("eval_metric=") == 3  # the example's 3 hard-coded epochs

        [materialization] = result.asset_materializations_for_node(f"{NAME}__trained_model")
        output_dir = Path(materialization.metadata["run_dir"].value)
        assert output_dir.is_relative_to(tmp_path / "storage")
        assert output_dir.name == result.run_id  # one directory per run, not shared
        log = (output_dir / "Exp" / "log.txt").read_text()  # where 0.0.1's logger writes
        assert log.count("eval_metric=") == 3
        assert f"data_root: {data}" in log
        effective = materialization.metadata["effective_config"].value
        assert effective["dataloader_cfg"]["data_root"] == str(data)
        assert effective["accelerator_cfg"]["accelerator"] == "cpu"
        value = result.asset_value(dg.AssetKey([NAME, "trained_model"]))
        assert value["run_dir"] == str(output_dir)
        assert value["returned"] == {"value": None}  # 0.0.1's run() returns nothing
