"""The tabular regressor example: data preparation, training quality, evaluation from the
checkpoint file, resume (at an epoch boundary and mid-epoch after a stop), the command line,
and DDP on two Ray workers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.core.distributed_exps import state_fingerprint
from tests.hooks import stopping_after_step, wrapped
from tinyexp_core.checkpoint import load_checkpoint
from tinyexp_core.config.exceptions import CheckpointError, DatasetCorruptError, RunStoppedError
from tinyexp_core.config.factory import build_exp
from tinyexp_core.contract import EvalResult, PreparedData, TrainResult
from tinyexp_core.data.tabular import load_tabular_split, read_tabular_manifest
from tinyexp_core.examples.tabular_exp import Exp
from tinyexp_core.launchers import run_in_process
from tinyexp_core.launchers.mp import launch_local
from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec
from tinyexp_core.training import TrainingSession
from tinyexp_core.training.stop import clear_stop

REPO_ROOT = Path(__file__).resolve().parents[2]
# Measured: test rmse / std of the test targets was 0.746, 0.758 and 0.765 for seeds 0-2
# after 20 epochs; predicting the mean scores 1.0.
RMSE_OVER_STD = 0.85


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = tmp_path_factory.mktemp("tabular-storage")
    return build_exp(Exp).prepare_data(str(root))


def _exp(tmp_path: Path, prepared: PreparedData, *overrides: str, cls: type = Exp) -> Exp:
    return build_exp(
        cls,
        [
            f"output_root={tmp_path / 'runs'}",
            f"data_cfg.prepared_path={prepared.path}",
            "progress_cfg.enabled=false",
            "logger_cfg.level=WARNING",
            *overrides,
        ],
    )


def test_prepare_data_is_versioned_standardized_and_verified(prepared, tmp_path):
    assert prepared.source == "diabetes" and prepared.shape == [10]
    assert sum(prepared.counts.values()) == 442
    assert prepared.counts == {"train": 288, "val": 66, "test": 88}  # round(442 * 0.2) = 88
    again = build_exp(Exp).prepare_data(str(Path(prepared.path).parents[2]))
    assert again.data_version == prepared.data_version  # idempotent: same input, same version
    other = build_exp(Exp, ["data_cfg.split_seed=1"]).prepare_data(str(tmp_path))
    assert other.data_version != prepared.data_version
    x, y = load_tabular_split(prepared.path, "train")
    assert torch.allclose(x.mean(0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(x.std(0), torch.ones(10), atol=1e-4)
    assert y.mean().item() == pytest.approx(prepared.params["target_mean"], rel=1e-5)
    # a changed file no longer matches the manifest's sha256
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("manifest.json", "train.pt", "val.pt", "test.pt"):
        (copy / name).write_bytes((Path(prepared.path) / name).read_bytes())
    (copy / "test.pt").write_bytes((copy / "val.pt").read_bytes())
    assert read_tabular_manifest(copy).data_version == prepared.data_version
    with pytest.raises(DatasetCorruptError, match="sha256"):
        load_tabular_split(copy, "test")


def test_trains_in_process_beats_the_mean_and_evaluates_the_file(prepared, tmp_path):
    exp = _exp(tmp_path, prepared, "run_id=inproc")
    result = run_in_process(exp)
    assert isinstance(result, TrainResult)
    assert result.num_epochs == 20 and result.world_size == 1
    assert result.primary_metric.name == "rmse" and result.primary_metric.direction == "min"
    assert result.best_value == min(r.metric("rmse") for r in result.history)
    assert Path(result.checkpoints.best).is_file() and Path(result.checkpoints.last).is_file()
    assert result.config["train_cfg"]["num_epochs"] == 20
    assert TrainResult.from_dict(json.loads(json.dumps(result.to_dict()))).best_value == (
        result.best_value
    )

    report = exp.evaluate(result.checkpoints.best, "test")
    assert isinstance(report, EvalResult) and report.num_samples == prepared.counts["test"]
    _, y = load_tabular_split(prepared.path, "test")
    std = float(y.double().std(unbiased=False))
    assert report.value < RMSE_OVER_STD * std, (report.metrics, std)
    assert report.metrics["r2"] > 0.2
    # the numbers come from the file's weights: on the val split they repeat training's best
    val = exp.evaluate(result.checkpoints.best, "val")
    assert val.value == pytest.approx(result.best_value, rel=1e-5)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(Path(result.checkpoints.best).read_bytes()[:-100])
    Path(f"{damaged}.sha256").write_bytes(Path(f"{result.checkpoints.best}.sha256").read_bytes())
    with pytest.raises(CheckpointError):
        exp.evaluate(str(damaged), "test")


def test_resume_continues_to_the_same_weights(prepared, tmp_path):
    straight = run_in_process(_exp(tmp_path, prepared, "run_id=straight", "train_cfg.num_epochs=4"))
    run_in_process(_exp(tmp_path, prepared, "run_id=split", "train_cfg.num_epochs=2"))
    resumed = run_in_process(
        _exp(tmp_path, prepared, "run_id=split", "train_cfg.num_epochs=4", "resume_from=auto")
    )
    assert resumed.resumed_from.endswith("last.pt") and resumed.num_epochs == 4
    a = load_checkpoint(straight.checkpoints.last)["model"]
    b = load_checkpoint(resumed.checkpoints.last)["model"]
    assert state_fingerprint(a) == state_fingerprint(b)
    assert [r.metric("rmse") for r in resumed.history] == [
        r.metric("rmse") for r in straight.history
    ]


@dataclass(repr=False)
class StopAtStepExp(Exp):
    """The tabular example asking for a stop (as a SIGTERM does) once global step
    `stop_at_step` is done, on every rank."""

    stop_at_step: int = 0

    def train(self):
        with stopping_after_step(self.stop_at_step):
            return super().train()


@pytest.mark.parametrize("num_workers", [1, 2], ids=["one-process", "mp-two-ranks"])
def test_stop_mid_epoch_then_resume_matches_an_uninterrupted_run(num_workers, prepared, tmp_path):
    # Agree after every step, so the stop step is exact (the default agrees every 0.2 s).
    common = ["train_cfg.num_epochs=3", "launcher=mp", f"num_workers={num_workers}",
              "checkpoint_cfg.agree_every_s=0"]  # fmt: skip
    straight = launch_local(_exp(tmp_path, prepared, "run_id=straight", *common))[0]
    steps = straight.history[0].step  # batches per epoch and rank
    stop_at = steps + steps // 2  # in the middle of the second epoch
    stopping = _exp(
        tmp_path, prepared, "run_id=split", f"stop_at_step={stop_at}", *common, cls=StopAtStepExp
    )
    try:
        with pytest.raises(RunStoppedError) as stopped:
            launch_local(stopping)
    finally:
        clear_stop()  # the one-process run asked in this process
    # Ranks agree on a stop without waiting on the step (`StopAgreement`): with two ranks
    # the stop asked for after step k is agreed at the next check, step k + 1, on both.
    stopped_at = stop_at + (1 if num_workers > 1 else 0)
    assert stopped.value.step == stopped_at
    assert stopped.value.checkpoint.endswith(f"step_{stopped_at:09d}.pt"), stopped.value
    last = tmp_path / "runs" / "split" / "checkpoints" / "last.pt"
    state = load_checkpoint(last)  # verified: size and sha256
    assert state["position"]["epoch"] == 1
    assert state["position"]["step_in_epoch"] == steps // 2 + stopped_at - stop_at
    assert state["position"]["world_size"] == num_workers
    assert len(state["rng_ranks"]) == num_workers
    assert [r["epoch"] for r in state["extra"]["history"]] == [0]

    resumed = launch_local(_exp(tmp_path, prepared, "run_id=split", "resume_from=auto", *common))[0]
    assert resumed.resumed_from == str(last)
    a = load_checkpoint(straight.checkpoints.last)["model"]
    b = load_checkpoint(resumed.checkpoints.last)["model"]
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # bit-identical
    # The interrupted epoch's row too: its loss sums came back with the position.
    assert [r.to_dict() | {"epoch_time_s": 0, "samples_per_s": 0} for r in resumed.history] == [
        r.to_dict() | {"epoch_time_s": 0, "samples_per_s": 0} for r in straight.history
    ]


def test_resume_from_a_periodic_step_checkpoint_is_bit_identical(prepared, tmp_path):
    periodic = ["train_cfg.num_epochs=2", "checkpoint_cfg.every_n_steps=4"]
    straight = run_in_process(
        _exp(tmp_path, prepared, "run_id=every4", *periodic, "checkpoint_cfg.keep_last_n=8")
    )
    files = sorted((tmp_path / "runs" / "every4" / "checkpoints").glob("step_*.pt"))
    # 288 train rows in batches of 32: 9 steps per epoch, a step checkpoint every 4
    assert [f.name for f in files] == [f"step_{n:09d}.pt" for n in (4, 8, 12, 16)]
    middle = files[2]
    position = load_checkpoint(middle)["position"]
    assert (position["epoch"], position["step_in_epoch"]) == (1, 3), position
    resumed = run_in_process(
        _exp(tmp_path, prepared, "run_id=from-step", *periodic, f"resume_from={middle}")
    )
    assert resumed.resumed_from == str(middle)
    a = load_checkpoint(straight.checkpoints.last)["model"]
    b = load_checkpoint(resumed.checkpoints.last)["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_cli_trains_and_rejects_a_bad_override(prepared, tmp_path):
    cmd = [sys.executable, "-m", "tinyexp_core.examples.tabular_exp"]
    common = [f"output_root={tmp_path}", f"data_cfg.prepared_path={prepared.path}"]
    done = subprocess.run(
        [*cmd, *common, "train_cfg.num_epochs=2", "run_id=cli", "progress_cfg.enabled=false"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch 2/2" in done.stdout + done.stderr
    assert (tmp_path / "cli" / "checkpoints" / "best.pt").is_file()
    bad = subprocess.run(
        [*cmd, "optimizer_cfg.lr=fast"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and "optimizer_cfg.lr" in bad.stderr


@dataclass(repr=False)
class FingerprintedTabularExp(Exp):
    """The tabular example, also returning each rank's final weights' fingerprint."""

    def train(self):
        def fingerprint(session, *_, **__):
            self._fingerprint = state_fingerprint(session.model)

        with wrapped(TrainingSession, "end_epoch", after=fingerprint):
            result = super().train()
        return {"result": result, "fingerprint": self._fingerprint}


def test_two_ray_workers_end_with_identical_weights(ray_cluster, prepared, tmp_path):
    exp = _exp(
        tmp_path, prepared, "run_id=ddp", "train_cfg.num_epochs=5", cls=FingerprintedTabularExp
    )
    spec = RayLaunchSpec(num_workers=2, num_cpus_per_worker=1)
    rank0, rank1 = RayLauncher(spec).run(exp)
    assert rank0["result"].world_size == rank1["result"].world_size == 2
    assert rank0["fingerprint"] == rank1["fingerprint"]  # DDP kept the replicas in lockstep
    saved = load_checkpoint(rank0["result"].checkpoints.last)["model"]
    assert state_fingerprint(saved) == rank0["fingerprint"]
    # both ranks saw the same all-reduced validation numbers
    assert [r.metric("rmse") for r in rank0["result"].history] == [
        r.metric("rmse") for r in rank1["result"].history
    ]
    assert all(math.isfinite(r.train_loss) for r in rank0["result"].history)


class _BrokenEvaluate(Exp):
    def evaluate(self, checkpoint_path: str, split: str = "test") -> EvalResult:
        raise RuntimeError("evaluation broke")


def test_rank0_scores_the_best_file_after_training_only_when_asked(prepared, tmp_path, monkeypatch):
    from tinyexp_core.files import sha256_file

    plain = run_in_process(_exp(tmp_path, prepared, "run_id=plain", "train_cfg.num_epochs=2"))
    assert plain.evaluations == {} and plain.best_loaded == {}, "not asked: nothing scored"

    exp = _exp(tmp_path, prepared, "run_id=asked", "train_cfg.num_epochs=2")
    exp.evaluate_after_train = ("val", "test")
    result = run_in_process(exp)
    best = result.checkpoints.best
    assert set(result.evaluations) == {"val", "test"}
    for split, entry in result.evaluations.items():
        assert entry["sha256"] == sha256_file(best)
        assert entry["dataset_path"] == prepared.path
        assert entry["result"] == exp.evaluate(best, split).to_dict(), split
    assert result.best_loaded == {
        "sha256": sha256_file(best),
        "epoch": load_checkpoint(best)["epoch"],
    }
    again = TrainResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.evaluations == result.evaluations and again.best_loaded == result.best_loaded

    from tinyexp_core.training.after import evaluate_after_training

    monkeypatch.setenv("RANK", "1")  # another rank: only rank 0 scores
    other = TrainResult.from_dict(plain.to_dict())
    assert evaluate_after_training(exp, other).evaluations == {}
    monkeypatch.delenv("RANK")
    broken = _exp(
        tmp_path, prepared, "run_id=broken", "train_cfg.num_epochs=1", cls=_BrokenEvaluate
    )
    broken.evaluate_after_train = ("val",)
    done = run_in_process(broken)  # the training result stands; the step scores it later
    assert done.evaluations == {} and done.best_loaded["sha256"] == sha256_file(
        done.checkpoints.best
    )
