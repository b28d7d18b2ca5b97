"""The gated champion (issue 12, must-show 3) on real trainings: a first and a better version
become champion through the blocking `champion_gate` check; a worse one (1 epoch at a learning
rate too small to learn) stays registered, not champion, the check fails with the gap and
blocks `model_evaluation`; `tinyexp-dagster promote` rolls back, recorded in the alias history
and in Dagster; evaluation then scores the rolled-back champion. Each move names who made it.

Own Dagster instance (DAGSTER_HOME, shared with the CLI) and storage root, the session's Ray
and Redis; three trainings on the bundled digits (1, 3 and 1 epochs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.dagster.support import dagster_resources, materializations
from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.registry import ModelRegistry
from tinyexp_dagster import pipeline_defs
from tinyexp_dagster.cli import main

NAME = "gated"
EXP = "tinyexp_core.examples.mnist_exp:Exp"
DEFS = pipeline_defs(NAME, EXP, champion_tolerance=0.0)
GOOD = ["train_cfg.num_epochs=1"]
BETTER = ["train_cfg.num_epochs=3"]
WORSE = ["train_cfg.num_epochs=1", "optimizer_cfg.lr=1e-6"]
GATE = "champion_gate"


def key(asset: str) -> dg.AssetKey:
    return dg.AssetKey([NAME, asset])


@dataclass
class Gated:
    instance: dg.DagsterInstance
    storage_root: Path
    registry: ModelRegistry
    runs: dict[str, dg.ExecuteInProcessResult]
    versions: dict[str, str]  # "good"/"better"/"worse" -> registered version


def _materialize(
    instance: dg.DagsterInstance, resources: dict, assets: list[str], overrides: list[str]
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*DEFS.assets, *DEFS.asset_checks],
        selection=[key(a) for a in assets],
        instance=instance,
        resources=resources,
        run_config={"ops": {f"{NAME}__trained_model": {"config": {"overrides": overrides}}}},
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def gated(ray_cluster, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gated]:
    home = tmp_path_factory.mktemp("gated-home")
    storage_root = tmp_path_factory.mktemp("gated-storage")
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)  # the CLI's `promote` records into this instance
    try:
        instance = dg.DagsterInstance.get()
        resources = dagster_resources(storage_root, redis_url)
        downstream = ["trained_model", "model_checkpoint", "model_evaluation"]
        runs = {
            "good": _materialize(instance, resources, ["prepared_dataset", *downstream], GOOD),
            "better": _materialize(instance, resources, downstream, BETTER),
            "worse": _materialize(instance, resources, downstream, WORSE),
        }
        versions = {
            label: materializations(result)["model_checkpoint"].metadata["version"].value
            for label, result in runs.items()
        }
        registry = ModelRegistry(storage_root / "models", NAME)
        yield Gated(instance, storage_root, registry, runs, versions)
        instance.dispose()
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def gate_of(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == GATE]
    return evaluation


def meta(entry: Any) -> dict[str, Any]:
    return {k: v.value for k, v in entry.metadata.items()}


def test_first_and_better_versions_become_champion(gated: Gated) -> None:
    good, better = gate_of(gated.runs["good"]), gate_of(gated.runs["better"])
    assert gated.runs["good"].success and gated.runs["better"].success
    assert good.passed and meta(good)["champion_before"] == "none"
    assert meta(good)["champion"] == gated.versions["good"]
    assert "first version" in good.description
    assert better.passed, better.description
    better_meta = meta(better)
    assert better_meta["champion_before"] == gated.versions["good"]
    assert better_meta["champion"] == gated.versions["better"]
    assert better_meta["split"] == "val" and better_meta["gap"] >= 0
    assert better_meta["new_accuracy"] >= better_meta["champion_accuracy"]
    # the evaluation of that run scored the new champion, compared with the one it replaced
    evaluation = meta(materializations(gated.runs["better"])["model_evaluation"])
    assert evaluation["champion_version"] == gated.versions["better"]
    table = evaluation["comparison"]
    assert f"champion {gated.versions['better']}" in table and gated.versions["good"] in table


def test_a_worse_version_is_registered_but_not_champion(gated: Gated) -> None:
    result, worse = gated.runs["worse"], gated.versions["worse"]
    evaluation = gate_of(result)
    assert not result.success
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    m = meta(evaluation)
    assert m["champion"] == m["champion_before"] == gated.versions["better"]
    assert m["gap"] < 0 and m["gap"] == pytest.approx(m["new_accuracy"] - m["champion_accuracy"])
    assert f"worse by {-m['gap']:.4f}" in evaluation.description
    assert "stays registered, not champion" in evaluation.description
    # blocking: the evaluation never ran; the version is on disk with its record
    assert "model_evaluation" not in materializations(result)
    record = gated.registry.version(worse)
    assert Path(record.path).is_file() and record.source_run == worse
    assert record.data_version and record.config_hash and record.created
    assert gated.registry.champion_version() == gated.versions["better"]


def test_promote_rolls_back_and_is_recorded(gated: Gated, redis_url: str, capsys) -> None:
    good = gated.versions["good"]
    root = ["--storage-root", str(gated.storage_root)]
    assert main([*root, "promote", NAME, good, "--reason", "rollback: v2 drifts"]) == 0
    assert gated.registry.champion_version() == good
    history = gated.registry.history()
    assert [m["version"] for m in history] == [good, gated.versions["better"], good]
    assert [m["moved_by"].split(" ")[0] for m in history[:2]] == [
        f"{NAME}/model_checkpoint:{GATE}"
    ] * 2
    assert history[-1]["moved_by"].endswith("via tinyexp-dagster promote")
    assert history[-1]["reason"] == "rollback: v2 drifts"
    assert history[-1]["previous"] == gated.versions["better"]
    # recorded in Dagster: an observation of the model_checkpoint asset
    records = gated.instance.fetch_observations(key("model_checkpoint"), limit=1).records
    observed = meta(records[0].asset_observation)
    assert observed["champion"] == good and observed["reason"] == "rollback: v2 drifts"
    assert observed["previous_champion"] == gated.versions["better"]
    # `models` lists every version, the rolled-back champion marked
    capsys.readouterr()
    assert main([*root, "models", NAME]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [line for line in lines if line.startswith("*")]
    assert len(marked) == 1 and good in marked[0]
    assert all(any(v in line for line in lines) for v in gated.versions.values())
    # evaluation reads the champion: the rolled-back file
    again = dg.materialize(
        [*DEFS.assets, *DEFS.asset_checks],
        selection=[key("model_evaluation")],
        instance=gated.instance,
        resources=dagster_resources(gated.storage_root, redis_url),
    )
    evaluated = meta(materializations(again)["model_evaluation"])
    assert evaluated["champion_version"] == good
    assert evaluated["checkpoint"] == gated.registry.version(good).path
    # `summary` (what `make run` prints) names the champion it evaluated
    capsys.readouterr()
    assert main(["summary", "--pipeline", NAME]) == 0
    out = capsys.readouterr().out
    assert f"champion: {good}" in out and f"checkpoint: {evaluated['checkpoint']}" in out


def test_promote_refuses_unknown_versions_and_empty_reasons(gated: Gated, capsys) -> None:
    root = ["--storage-root", str(gated.storage_root)]
    before = gated.registry.champion_version()
    assert main([*root, "promote", NAME, "nope", "--reason", "x"]) == 2
    assert "has no version 'nope'" in capsys.readouterr().err
    assert main([*root, "promote", NAME, gated.versions["worse"], "--reason", " "]) == 2
    assert main([*root, "models", "unknown_model"]) == 2
    assert gated.registry.champion_version() == before


# ---------------------------------------------------------------- compare (must-show 4)


def trained_meta(gated: Gated, label: str) -> dict[str, Any]:
    return meta(materializations(gated.runs[label])["trained_model"])


def test_compare_prints_the_override_diff_and_metric_deltas(gated: Gated, capsys, tmp_path):
    good, worse = gated.runs["good"].run_id, gated.versions["worse"]  # a run id, a version
    plot = tmp_path / "curves.png"
    capsys.readouterr()
    args = ["compare", good, worse, "--pipeline", NAME, "--plot", str(plot)]
    assert main(["--storage-root", str(gated.storage_root), *args]) == 0
    out = capsys.readouterr().out
    section = out.split("overrides (A | B):\n")[1].split("effective config")[0]
    rows = [line.split() for line in section.strip().splitlines()[1:]]
    assert rows == [["optimizer_cfg.lr", "-", "1e-6"]]  # num_epochs=1 on both sides
    config = out.split("effective config differences (A | B):\n")[1].split("metrics")[0]
    assert any(
        line.split()[:3] == ["optimizer_cfg.lr", "0.001", "1e-06"] for line in config.splitlines()
    )
    a, b = trained_meta(gated, "good"), trained_meta(gated, "worse")
    metrics = {
        line.split()[0]: line.split()[1:]
        for line in out.split("metrics (B - A):\n")[1].split("per epoch:")[0].splitlines()
    }
    va, vb = a["best_val_accuracy"], b["best_val_accuracy"]
    assert metrics["best_val_accuracy"] == [f"{va:.4f}", f"{vb:.4f}", f"{vb - va:+.4f}"]
    assert vb - va < -0.2  # the learning rate that hurts, in numbers
    loss_a, loss_b = a["final_train_loss"], b["final_train_loss"]
    assert metrics["final_train_loss"][2] == f"{loss_b - loss_a:+.4f}"
    epochs = out.split("per epoch:\n")[1].split("curves:")[0].strip().splitlines()
    assert epochs[0].split()[0] == "epoch" and epochs[1].split()[0] == "1" and len(epochs) == 2
    assert epochs[1].split()[3] == f"{a['val_accuracy_epoch_001']:.4f}"
    assert epochs[1].split()[6] == f"{b['val_accuracy_epoch_001']:.4f}"
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_compare_side_by_side_epochs_and_unknown_references(gated: Gated, capsys) -> None:
    root = ["--storage-root", str(gated.storage_root)]
    good, better = gated.versions["good"], gated.versions["better"]
    capsys.readouterr()
    assert main([*root, "compare", good, better, "--pipeline", NAME]) == 0
    out = capsys.readouterr().out
    section = out.split("overrides (A | B):\n")[1].split("effective config")[0]
    assert [line.split() for line in section.strip().splitlines()[1:]] == [
        ["train_cfg.num_epochs", "1", "3"]
    ]
    epochs = out.split("per epoch:\n")[1].strip().splitlines()[1:]
    assert [row.split()[0] for row in epochs] == ["1", "2", "3"]
    assert all(row.split()[1:4] == ["-", "-", "-"] for row in epochs[1:])  # A had 1 epoch
    assert main([*root, "compare", good, "no-such-run", "--pipeline", NAME]) == 2
    err = capsys.readouterr().err
    assert "'no-such-run' is not a run id, partition key or model version of gated/" in err


# ---------------------------------------------------------------- without training


def test_tolerance_is_validated() -> None:
    for bad in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(ConfigValueError, match="champion_tolerance"):
            pipeline_defs("t", EXP, champion_tolerance=bad)
