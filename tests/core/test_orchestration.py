"""The one config path's pieces: overrides parsed once, typed values applied as they are,
the orchestrator-owned keys, and the accelerator a run forces on an experiment's own
accelerator config (TinyExp 0.0.1's knows cpu and ddp only)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tinyexp_core.accelerators import ACCELERATORS, AcceleratorCfg
from tinyexp_core.config.exceptions import ConfigValueError, UnknownAcceleratorTypeError
from tinyexp_core.config.factory import build_exp
from tinyexp_core.config.orchestration import (
    ORCHESTRATED_KEYS,
    RunOverrides,
    accelerator_choices,
    experiment_accelerator,
    is_orchestrated,
)
from tinyexp_core.config.overrides import Override
from tinyexp_core.examples.mnist_exp import Exp
from tinyexp_core.sweep import build_sweep

LR = 0.00012345678901234


@dataclass
class OldAcceleratorCfg:
    """TinyExp 0.0.1's shape: a plain str, the choices in build_accelerator."""

    accelerator: str = "cpu"

    def build_accelerator(self):
        if self.accelerator == "cpu":
            return "cpu accelerator"
        elif self.accelerator in ("ddp", "gloo"):
            return "ddp accelerator"
        raise UnknownAcceleratorTypeError(self.accelerator)


@dataclass
class OpaqueAcceleratorCfg:
    accelerator: str = "cpu"


def test_typed_values_are_applied_as_they_are_and_text_is_their_exact_record() -> None:
    layers = RunOverrides.of(
        pipeline=["train_cfg.num_epochs=2"],
        trial=[("optimizer_cfg.lr", LR)],
        typed=[("optimizer_cfg.weight_decay", 1e-7)],
        run=["seed=3"],
    )
    exp = layers.build(Exp, {"num_workers": 2})
    assert exp.optimizer_cfg.lr.hex() == LR.hex() and exp.num_workers == 2
    assert layers.texts() == [
        "train_cfg.num_epochs=2",
        f"optimizer_cfg.lr={LR!r}",
        "optimizer_cfg.weight_decay=1e-07",
        "seed=3",
    ]
    # the text record rebuilds the same values (the evaluation asset reads it back)
    again = build_exp(Exp, layers.texts())
    assert again.optimizer_cfg.lr.hex() == LR.hex()
    assert f"{LR:g}" != repr(LR), "the value this test is about: %g would round it"


def test_run_layers_may_not_touch_the_trial_or_the_forced_keys() -> None:
    with pytest.raises(ConfigValueError, match="the sweep trial"):
        RunOverrides.of(trial=[("optimizer_cfg.lr", LR)], run=["optimizer_cfg.lr=0.5"])
    with pytest.raises(ConfigValueError, match="'num_workers': got '4'.*orchestrator sets it"):
        RunOverrides.of(run=["num_workers=4"]).build(Exp, {"num_workers": 1})
    with pytest.raises(ConfigValueError, match="'forced': got 'seed'"):
        RunOverrides().build(Exp, {"seed": 1})  # only orchestrator-owned keys are forced


def test_one_list_of_orchestrated_keys_serves_the_schema_and_the_sweep() -> None:
    from tinyexp_dagster.schema import ORCHESTRATED_FIELDS, exp_config_model

    assert ORCHESTRATED_FIELDS is ORCHESTRATED_KEYS
    assert is_orchestrated("accelerator_cfg.collective_timeout_s")
    assert not is_orchestrated("accelerator_cfg.mixed_precision")
    fields = exp_config_model(Exp).model_fields
    assert "num_workers" not in fields
    assert "collective_timeout_s" not in fields["accelerator_cfg"].annotation.model_fields
    for key in ("num_workers", "progress_cfg.throttle_s", "accelerator_cfg.accelerator"):
        with pytest.raises(ConfigValueError, match="the orchestrator sets this key"):
            build_sweep(Exp, [], {key: [1]})


def test_a_sweep_keeps_short_keys_and_exact_values() -> None:
    sweep = build_sweep(Exp, [], {"optimizer_cfg.lr": [0.001, LR, 0.00012345678]})
    assert sweep.keys == ["lr=0.001", f"lr={LR!r}", "lr=0.00012345678"]
    assert [t.values[0][1] for t in sweep.trials] == [0.001, LR, 0.00012345678]
    assert sweep.trials[1].overrides == [f"optimizer_cfg.lr={LR!r}"]


def test_the_accelerator_choices_come_from_the_experiments_own_config() -> None:
    assert accelerator_choices(AcceleratorCfg()) == ACCELERATORS  # a Literal
    assert accelerator_choices(OldAcceleratorCfg()) == ("cpu", "ddp", "gloo")
    assert accelerator_choices(OpaqueAcceleratorCfg()) is None


@pytest.mark.parametrize(
    ("requested", "choices", "workers", "chosen"),
    [
        ("auto", ACCELERATORS, 2, "auto"),
        ("auto", ("cpu", "ddp"), 2, "ddp"),
        ("auto", ("cpu", "ddp"), 1, "cpu"),
        ("cpu", ("cpu", "ddp"), 2, "cpu"),
        ("ddp", ("cpu", "ddp"), 1, "ddp"),
        ("auto", None, 2, None),
    ],
)
def test_the_forced_accelerator_is_one_the_experiment_takes(
    requested, choices, workers, chosen
) -> None:
    value, why = experiment_accelerator(requested, choices, workers)
    assert value == chosen
    assert (chosen or "not set") in why


def test_an_accelerator_the_experiment_cannot_take_names_its_own_choices() -> None:
    with pytest.raises(ConfigValueError) as info:
        experiment_accelerator("ddp", ("cpu", "gpu"), 2)
    assert str(info.value) == (
        "config key 'accelerator_cfg.accelerator': got 'ddp', allowed: one of 'cpu', 'gpu'"
    )
    with pytest.raises(ConfigValueError, match="one of 'cpu'$"):
        experiment_accelerator("auto", ("cpu",), 2)


def test_unknown_accelerator_with_one_argument_lists_no_choices() -> None:
    message = str(UnknownAcceleratorTypeError("auto"))
    assert "'auto'" in message and "one of" not in message and "'hf'" not in message
    listed = str(UnknownAcceleratorTypeError("tpu", ACCELERATORS))
    assert listed.endswith("one of 'auto', 'cpu', 'ddp', 'hf'")


def test_an_override_is_parsed_once_and_typed_values_never() -> None:
    parsed = Override.parse("optimizer_cfg.lr=1e-3")
    assert (parsed.key, parsed.value, str(parsed)) == ("optimizer_cfg.lr", 0.001, parsed.text)
    typed = Override.typed("optimizer_cfg.lr", LR)
    assert typed.raw is None and str(typed) == f"optimizer_cfg.lr={LR!r}"
    exp = build_exp(Exp, [typed])
    assert exp.optimizer_cfg.lr.hex() == LR.hex()
    with pytest.raises(ConfigValueError):
        build_exp(Exp, [Override.typed("optimizer_cfg.name", "lion")])
