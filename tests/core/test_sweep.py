"""Sweeps in the core: trials from a grid or a random search, checked against the
experiment; median pruning; the leaderboard's order; the sweep's board in a real Redis."""

from __future__ import annotations

import math
import uuid

import pytest

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.examples.mnist_exp import Exp
from tinyexp_core.sweep import (
    EarlyStopping,
    SweepBoard,
    build_sweep,
    leaderboard_rows,
    should_prune,
)

GRID = {"optimizer_cfg.lr": [0.001, 0.003], "module_cfg.dropout": [0.1, 0.25]}


def test_grid_trials_have_readable_stable_keys_and_overrides() -> None:
    sweep = build_sweep(Exp, [], GRID, max_concurrent=2)
    assert sweep.keys == [
        "lr=0.001;dropout=0.1",
        "lr=0.001;dropout=0.25",
        "lr=0.003;dropout=0.1",
        "lr=0.003;dropout=0.25",
    ]
    assert sweep.trial("lr=0.003;dropout=0.1").overrides == [
        "optimizer_cfg.lr=0.003",
        "module_cfg.dropout=0.1",
    ]
    assert sweep.max_concurrent == 2 and sweep.early_stopping is None
    assert build_sweep(Exp, [], {"grid": GRID}).keys == sweep.keys  # the explicit form
    assert build_sweep(Exp, [], GRID).max_concurrent == 4  # default: every trial at once


def test_random_search_is_reproducible_and_in_range() -> None:
    spec = {
        "random": {
            "params": {
                "optimizer_cfg.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                "train_cfg.num_epochs": {"low": 1, "high": 3},
                "optimizer_cfg.name": ["adam", "sgd"],
            },
            "num_trials": 6,
            "seed": 7,
        }
    }
    first, again = build_sweep(Exp, [], spec), build_sweep(Exp, [], spec)
    assert first.keys == again.keys and len(first.trials) == 6
    for trial in first.trials:
        values = dict(trial.values)
        assert 1e-4 <= values["optimizer_cfg.lr"] <= 1e-2
        assert isinstance(values["train_cfg.num_epochs"], int)
        assert values["optimizer_cfg.name"] in ("adam", "sgd")
    other_seed = {"random": {**spec["random"], "seed": 8}}
    assert build_sweep(Exp, [], other_seed).keys != first.keys


@pytest.mark.parametrize(
    ("sweep", "field", "allowed"),
    [
        ({"optimizer_cfg.lrr": [0.1]}, "sweep.optimizer_cfg.lrr", "a field of optimizer_cfg"),
        ({"optimizer_cfg.lr": []}, "sweep.optimizer_cfg.lr", "a non-empty list"),
        ({"optimizer_cfg.lr": ["fast"]}, "sweep.optimizer_cfg.lr", "a float"),
        ({"module_cfg.dropout": [0.7]}, "sweep trial dropout=0.7", "a probability in [0, 0.5)"),
        ({"num_workers": [1, 2]}, "sweep", "the orchestrator sets this key"),
        ({"optimizer_cfg.lr": [0.1, 0.1]}, "sweep", "distinct trials"),
        ({}, "sweep", "a non-empty mapping"),
        ({"random": {"params": {"optimizer_cfg.lr": {"low": 1}}, "num_trials": 2}},
         "sweep.random.params.optimizer_cfg.lr", "{low, high"),
        ({"random": {"params": {"optimizer_cfg.lr": [0.1]}, "num_trials": 0}},
         "sweep.random.num_trials", "an integer >= 1"),
    ],
)  # fmt: skip
def test_bad_sweeps_name_the_field_value_and_what_is_allowed(sweep, field, allowed) -> None:
    with pytest.raises(ConfigValueError) as caught:
        build_sweep(Exp, [], sweep)
    assert caught.value.key == field
    assert allowed in str(caught.value)


def test_bad_concurrency_and_early_stopping() -> None:
    with pytest.raises(ConfigValueError, match="max_concurrent"):
        build_sweep(Exp, [], GRID, max_concurrent=0)
    with pytest.raises(ConfigValueError, match="early_stopping.warmup"):
        build_sweep(Exp, [], GRID, early_stopping={"warmup": 1})
    with pytest.raises(ConfigValueError, match="early_stopping.warmup_epochs"):
        build_sweep(Exp, [], GRID, early_stopping={"warmup_epochs": 0})


def test_a_long_key_becomes_a_short_hash() -> None:
    grid = {f"data_cfg.{k}": [0.5] for k in ("mean", "std")} | {
        "optimizer_cfg.weight_decay": [0.000123456],
        "lr_scheduler_cfg.gamma": [0.123456],
        "optimizer_cfg.momentum": [0.987654],
    }
    [trial] = build_sweep(Exp, [], grid).trials
    assert trial.key.startswith("trial-") and len(trial.key) == 16
    assert "data_cfg.mean=0.5" in trial.overrides


def test_median_pruning() -> None:
    rule = EarlyStopping(warmup_epochs=2, min_trials=2)
    assert not should_prune(0.1, [0.9, 0.8], "max", 1, rule)  # warm-up
    assert not should_prune(0.1, [0.9], "max", 2, rule)  # too few others
    assert should_prune(0.1, [0.9, 0.8], "max", 2, rule)
    assert not should_prune(0.75, [1.0, 0.5], "max", 2, rule)  # the median itself
    assert should_prune(80.0, [50.0, 60.0, 70.0], "min", 3, rule)  # rmse: lower is better
    assert should_prune(math.nan, [0.5, 0.6], "max", 2, rule)


def test_leaderboard_order_follows_the_direction() -> None:
    rows = [{"trial": "a", "best": 0.5}, {"trial": "b", "best": None}, {"trial": "c", "best": 0.9}]
    assert [r["trial"] for r in leaderboard_rows(rows, "max")] == ["c", "a", "b"]
    assert [r["trial"] for r in leaderboard_rows(rows, "min")] == ["a", "c", "b"]


def test_board_in_redis(redis_url: str) -> None:
    from tinyexp_core.services.redis_client import make_client

    client = make_client(redis_url)
    sweep = build_sweep(Exp, [], {"optimizer_cfg.lr": [0.001, 0.003]})
    board = SweepBoard(client, f"tinyexp:sweep:test:{uuid.uuid4().hex}")
    try:
        board.declare(sweep, "accuracy", "max")
        assert {r["status"] for r in board.rows()} == {"queued"} and not board.finished()
        board.record_epoch("lr=0.001", 1, 0.8)
        board.record_epoch("lr=0.003", 1, 0.6)
        assert board.others_at("lr=0.003", 1) == [0.8]
        board.update("lr=0.003", status="pruned", epoch=1, best=0.6)
        board.update("lr=0.001", status="running", epoch=1, best=0.8)
        assert [r["trial"] for r in board.rows()] == ["lr=0.001", "lr=0.003"]
        assert not board.finished()
        board.update("lr=0.001", status="finished")
        assert board.finished()
        # every key of the board expires, the epochs hash first written after declare too
        for suffix in ("meta", "trials", "epochs"):
            assert 0 < client.ttl(f"{board.key}:{suffix}") <= 7 * 24 * 3600, suffix
    finally:
        client.delete(*client.keys(f"{board.key}:*"))
        client.close()
    with pytest.raises(ConfigValueError):
        SweepBoard(client, "other:key")
