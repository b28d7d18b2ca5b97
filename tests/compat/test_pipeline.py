"""TinyExp 0.0.1's `mnist_exp`, import lines rewritten only, materialized through
`pipeline_defs` (issue 11, must-show 3): its `Exp` implements `run()` alone, so the pipeline
is one training asset that runs it on the Ray ranks, streams rank 0's log into the step log
and records the run's output directory, where 0.0.1 writes `<output_root>/Exp/log.txt`.

With the default resources (2 Ray workers, accelerator `auto`), issue 21 must-show 2: its own
AcceleratorCfg (`accelerator: str = "cpu"`, cpu and ddp only) gets `ddp`, never `auto`, and
the two ranks train as one DDP job."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.test_utils import instance_for_test

from tests.compat.conftest import PortedRelease
from tests.compat.test_examples import _FAST_LOADERS, _write_mnist
from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_dagster import pipeline_defs
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    RunScopedJSONIOManager,
    StorageResource,
)

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

    data = _write_mnist(tmp_path / "data")  # 64 train / 32 test images
    storage = StorageResource(root=str(tmp_path / "storage"))
    resources = {
        "ray": RayDDPResource(),  # the defaults: 2 workers, accelerator auto
        "redis": RedisProgressResource(url=redis_url),
        "storage": storage,
        "io_manager": RunScopedJSONIOManager(storage=storage),
    }
    assert resources["ray"].num_workers == 2 and resources["ray"].accelerator == "auto"
    # 0.0.1 hard-codes 3 epochs; its own knobs are data root, batch size and loader workers.
    # One image per rank and step: 32 steps an epoch on each of the 2 ranks, so 0.0.1's
    # every-20-steps line shows the learning rate it scaled by the world size.
    config = {
        "exp": {"dataloader_cfg": {"data_root": str(data), "train_batch_size_per_device": 1}},
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
        # the step log says which accelerator the pipeline chose, and why
        assert "accelerator: accelerator_cfg.accelerator=ddp" in logs
        assert "takes cpu, ddp (not auto); ddp for 2 worker(s)" in logs

        [materialization] = result.asset_materializations_for_node(f"{NAME}__trained_model")
        output_dir = Path(materialization.metadata["run_dir"].value)
        assert output_dir.is_relative_to(tmp_path / "storage")
        assert output_dir.name == result.run_id  # one directory per run, not shared
        log = (output_dir / "Exp" / "log.txt").read_text()  # where 0.0.1's logger writes
        assert log.count("eval_metric=") == 3
        assert f"data_root: {data}" in log
        # DDP ran on 2 ranks: 0.0.1's optimizer takes lr_per_img x batch x world_size,
        # which rank 0 logs (1/64 x 1 x 2; on one rank it would be 0.0156)...
        assert "epoch 0 loss:" in log and f"lr: {1 / 64 * 1 * 2: .4f}" in log, log[-2000:]
        assert f"lr: {1 / 64 * 1 * 1: .4f}" not in log
        # ...its rank-tagged lines come from rank 0 of the accelerator's world, and rank 1
        # built its own logger (`log_rank1.txt`, WARNING and above) with its own rank
        assert "| rank0 |" in log
        assert (output_dir / "Exp" / "log_rank1.txt").is_file()
        effective = materialization.metadata["effective_config"].value
        assert effective["dataloader_cfg"]["data_root"] == str(data)
        assert effective["accelerator_cfg"]["accelerator"] == "ddp"
        assert effective["num_workers"] == 2
        assert materialization.metadata["workers"].value == 2
        value = result.asset_value(dg.AssetKey([NAME, "trained_model"]))
        assert value["run_dir"] == str(output_dir)
        assert value["returned"] == {"value": None}  # 0.0.1's run() returns nothing


def test_ported_accelerator_cfg_takes_cpu_and_ddp_and_its_error_lists_no_other_choices(
    ported_mnist: str,
) -> None:
    """What the pipeline reads from 0.0.1's own AcceleratorCfg, and the error it raises."""
    from tinyexp_core.config.exceptions import UnknownAcceleratorTypeError
    from tinyexp_core.config.factory import load_exp_class
    from tinyexp_core.config.orchestration import accelerator_choices, experiment_accelerator

    cfg = load_exp_class(ported_mnist)().accelerator_cfg
    assert accelerator_choices(cfg) == ("cpu", "ddp")
    assert experiment_accelerator("auto", ("cpu", "ddp"), 2)[0] == "ddp"
    assert experiment_accelerator("auto", ("cpu", "ddp"), 1)[0] == "cpu"
    cfg.accelerator = "auto"
    with pytest.raises(UnknownAcceleratorTypeError) as info:
        cfg.build_accelerator()
    message = str(info.value)
    assert "'auto'" in message and "'hf'" not in message and "one of" not in message
