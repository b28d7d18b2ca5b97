"""Item 4: a checkpoint truncated, altered or half-written on disk is detected (size and
sha256 against its sidecar) and never loaded on resume: the run falls back to the newest
valid checkpoint with a warning naming both files, or fails clearly when none is valid.

Unit tests of the same rules (sidecar order, crash points, weights_only) live in
tests/core/test_checkpoint.py; here they are exercised through the training resume path:
a Dagster retry (resume_from=auto) and Ray-launched runs of the experiment.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from tests.reliability.exps import ReliabilityExp, read_trace
from tests.reliability.support import (
    FAST,
    log_messages,
    materialization_metadata,
    prepared_dataset,
    resources,
    step_errors,
    train_config,
    trained_model,
)
from tinyexp_core.checkpoint import CheckpointManager, load_checkpoint, sha256_file
from tinyexp_core.config.exceptions import CheckpointCorruptError, WorkerFailedError
from tinyexp_core.config.factory import build_exp
from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec


def _launch(run_root: Path, run_id: str, prepared: str, *overrides: str) -> tuple[dict, list]:
    """Train on one Ray worker; returns rank 0's summary and its forwarded log lines."""
    exp = build_exp(
        ReliabilityExp,
        [
            *FAST,
            f"output_root={run_root}",
            f"run_id={run_id}",
            f"data_cfg.prepared_path={prepared}",
            "resume_from=auto",
            *overrides,
        ],
    )
    lines: list[str] = []
    launcher = RayLauncher(RayLaunchSpec(num_workers=1), log_callback=lines.append)
    return launcher.run(exp)[0], lines


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def two_epoch_run(ray_cluster, digits_prepared, tmp_path_factory) -> Path:
    """A finished 2-epoch run: checkpoints epoch_0000.pt, epoch_0001.pt and last.pt."""
    root = tmp_path_factory.mktemp("base-run")
    _launch(root, "base", digits_prepared, "train_cfg.num_epochs=2")
    return root / "base"


def _copy_run(base: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / "resumed"
    shutil.copytree(base, run_dir)
    (run_dir / "trace.jsonl").unlink()
    return run_dir


def test_truncated_last_checkpoint_falls_back_on_a_dagster_retry(
    ray_cluster, redis_url, storage, instance, tmp_path
):
    marker = tmp_path / "fail-marker"
    marker.write_text("1")
    overrides = [
        "train_cfg.num_epochs=3",
        "fault=truncate_last",
        "fault_epoch=1",
        f"fault_marker={marker}",
    ]
    result = dg.materialize(
        [prepared_dataset, trained_model],
        instance=instance,
        resources=resources(storage, redis_url),
        run_config=train_config(overrides),
    )
    assert result.success
    checkpoints = storage / "runs" / result.run_id / "checkpoints"
    (retried,) = step_errors(instance, result.run_id)
    assert "injected failure after epoch 1" in retried

    # The retry found last.pt truncated, said so naming both files, resumed from the copy.
    warnings = [
        m
        for m in log_messages(instance, result.run_id)
        if "is unusable" in m and "falling back to" in m
    ]
    assert len(warnings) == 1, warnings
    assert f"checkpoint {checkpoints / 'last.pt'} is unusable (size: expected" in warnings[0]
    assert f"falling back to {checkpoints / 'epoch_0001.pt'}" in warnings[0]
    meta = materialization_metadata(instance, result.run_id, "trained_model")
    assert meta["resumed_from"] == str(checkpoints / "epoch_0001.pt")
    assert meta["epochs"] == 3
    trace = read_trace(checkpoints.parent)
    assert [(t["epoch"], t["attempt"]) for t in trace] == [(0, 1), (1, 1), (2, 2)]
    load_checkpoint(checkpoints / "last.pt")  # rewritten by epoch 2, verified again


def test_altered_checkpoints_fall_back_to_the_newest_valid_one(
    two_epoch_run, digits_prepared, tmp_path
):
    run_dir = _copy_run(two_epoch_run, tmp_path)
    checkpoints = run_dir / "checkpoints"
    for name in ("last.pt", "epoch_0001.pt"):
        _flip_byte(checkpoints / name)  # same size, other bytes: only sha256 can tell
    summary, lines = _launch(run_dir.parent, "resumed", digits_prepared, "train_cfg.num_epochs=3")
    assert summary.resumed_from == str(checkpoints / "epoch_0000.pt")
    fallbacks = [line for line in lines if "is unusable" in line]
    assert len(fallbacks) == 2, fallbacks
    assert f"{checkpoints / 'last.pt'} is unusable (sha256: expected" in fallbacks[0]
    assert f"falling back to {checkpoints / 'epoch_0001.pt'}" in fallbacks[0]
    assert f"{checkpoints / 'epoch_0001.pt'} is unusable (sha256: expected" in fallbacks[1]
    assert f"falling back to {checkpoints / 'epoch_0000.pt'}" in fallbacks[1]
    # Epoch 1's only checkpoints were bad, so it is trained again; epoch 0 is not.
    assert [t["epoch"] for t in read_trace(run_dir)] == [1, 2]
    assert summary.num_epochs == 3


def test_no_valid_checkpoint_fails_clearly_and_touches_nothing(
    two_epoch_run, digits_prepared, tmp_path
):
    run_dir = _copy_run(two_epoch_run, tmp_path)
    checkpoints = run_dir / "checkpoints"
    _flip_byte(checkpoints / "last.pt")
    with open(checkpoints / "epoch_0001.pt", "r+b") as fh:
        fh.truncate(100)
    (checkpoints / "epoch_0000.pt.sha256").unlink()
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}

    with pytest.raises(WorkerFailedError) as info:
        _launch(run_dir.parent, "resumed", digits_prepared, "train_cfg.num_epochs=3")
    cause = info.value.cause
    assert info.value.rank == 0
    # The typed error crossed from the Ray worker to the driver intact.
    assert isinstance(info.value.__cause__, CheckpointCorruptError)
    assert info.value.__cause__.path == str(checkpoints)
    assert cause.startswith("CheckpointCorruptError: checkpoint ")
    assert "no valid checkpoint among" in cause
    assert "last.pt (sha256: expected" in cause
    assert "epoch_0001.pt (size: expected" in cause
    assert "epoch_0000.pt (sha256 sidecar epoch_0000.pt.sha256 is missing)" in cause
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
    assert read_trace(run_dir) == [], "nothing was trained"


@pytest.mark.parametrize("crash", ["crash_mid_write", "crash_after_replace"])
def test_a_crash_while_writing_never_leaves_a_file_that_verifies(
    crash, ray_cluster, digits_prepared, tmp_path
):
    marker = tmp_path / "fail-marker"
    marker.write_text("1")
    run_root = tmp_path / "runs"
    faults = [f"fault={crash}", "fault_epoch=1", f"fault_marker={marker}"]
    with pytest.raises(WorkerFailedError) as info:
        _launch(run_root, "crash", digits_prepared, "train_cfg.num_epochs=2", *faults)
    assert info.value.rank == 0 and "worker process died" in info.value.cause

    checkpoints = run_root / "crash" / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    state = CheckpointManager(checkpoints).latest_valid()
    assert state is not None
    if crash == "crash_mid_write":
        # The half-written bytes sit in a temp file that is never taken for a checkpoint;
        # last.pt still holds epoch 0, intact.
        (tmp,) = [n for n in names if n.startswith(".last.pt.tmp-")]
        assert 0 < (checkpoints / tmp).stat().st_size < (checkpoints / "last.pt").stat().st_size
        assert state[0] == str(checkpoints / "last.pt") and state[1]["epoch"] == 0
    else:
        # last.pt holds epoch 1's bytes, but its sidecar still vouches for epoch 0's.
        assert load_checkpoint(checkpoints / "last.pt", verify=False)["epoch"] == 1
        assert (
            sha256_file(checkpoints / "last.pt") not in (checkpoints / "last.pt.sha256").read_text()
        )
        assert state[0] == str(checkpoints / "epoch_0000.pt") and state[1]["epoch"] == 0
    assert "epoch_0001.pt" not in names

    summary, _ = _launch(run_root, "crash", digits_prepared, "train_cfg.num_epochs=2")
    assert summary.resumed_from == state[0]
    assert summary.num_epochs == 2
    assert [t["epoch"] for t in read_trace(run_root / "crash")] == [0, 1, 1]
