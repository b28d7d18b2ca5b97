"""Override parsing: nested keys, types, Literal choices, unknown keys with suggestions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest
from omegaconf import OmegaConf

from tinyexp_core import TinyExp, build_exp
from tinyexp_core.config.exceptions import (
    ConfigTypeError,
    ConfigValueError,
    ExperimentImportError,
    OverrideSyntaxError,
    UnknownConfigurationKeyError,
)
from tinyexp_core.config.factory import format_help, iter_config_keys, to_dict
from tinyexp_core.examples.mnist_exp import Exp as MnistExp


@dataclass(repr=False)
class ToyExp(TinyExp):
    @dataclass
    class InnerCfg:
        width: int = 4
        ratio: float = 0.5
        name: str = "toy"
        flag: bool = False
        kind: Literal["a", "b"] = "a"
        sizes: list[int] = field(default_factory=lambda: [1, 2])
        maybe: int | None = None

        def validate(self) -> None:
            if self.width < 1:
                raise ConfigValueError("width", self.width, "an integer >= 1")

    inner_cfg: InnerCfg = field(default_factory=InnerCfg)


def test_nested_overrides_apply_with_types():
    exp = build_exp(
        ToyExp,
        [
            "inner_cfg.width=8",
            "inner_cfg.ratio=1",
            "inner_cfg.name=123",
            "inner_cfg.flag=true",
            "inner_cfg.kind=b",
            "inner_cfg.sizes=[3,4,5]",
            "inner_cfg.maybe=7",
            "seed=3",
        ],
    )
    inner = exp.inner_cfg
    assert (inner.width, inner.ratio, inner.name, inner.flag, inner.kind) == (
        8,
        1.0,
        "123",
        True,
        "b",
    )
    assert isinstance(inner.ratio, float)
    assert inner.sizes == [3, 4, 5] and inner.maybe == 7 and exp.seed == 3
    assert exp.overrided_cfg["inner_cfg.width"] == 8


def test_defaults_untouched_between_instances():
    build_exp(ToyExp, ["inner_cfg.sizes=[9]"])
    assert ToyExp().inner_cfg.sizes == [1, 2]


@pytest.mark.parametrize(
    ("override", "error", "needle"),
    [
        ("inner_cfg.width=abc", ConfigTypeError, "expected int"),
        ("inner_cfg.width=1.5", ConfigTypeError, "expected int"),
        ("inner_cfg.flag=maybe", ConfigTypeError, "bool"),
        ("inner_cfg.ratio=[1]", ConfigTypeError, "float"),
        ("inner_cfg.kind=c", ConfigValueError, "'a', 'b'"),
        ("inner_cfg.width=0", ConfigValueError, "inner_cfg.width"),
        ("inner_cfg=3", ConfigTypeError, "nested config"),
        ("inner_cfg.widht=3", UnknownConfigurationKeyError, "did you mean 'inner_cfg.width'"),
        ("width=3", UnknownConfigurationKeyError, "did you mean 'inner_cfg.width'"),
        ("inner_cfg.width.x=3", UnknownConfigurationKeyError, "inner_cfg.width.x"),
        ("no_equals_sign", OverrideSyntaxError, "key=value"),
        ("overrided_cfg={}", UnknownConfigurationKeyError, "overrided_cfg"),
    ],
)
def test_bad_overrides_raise_typed_errors(override, error, needle):
    with pytest.raises(error) as info:
        build_exp(ToyExp, [override])
    assert needle in str(info.value)


def test_unknown_key_error_holds_key_and_suggestion():
    with pytest.raises(UnknownConfigurationKeyError) as info:
        build_exp(MnistExp, ["optimizer_cfg.lrr=0.1"])
    assert info.value.key == "optimizer_cfg.lrr"
    assert info.value.suggestion == "optimizer_cfg.lr"


@pytest.mark.parametrize(
    "override",
    [
        "optimizer_cfg.lr=0",
        "optimizer_cfg.lr=-0.1",
        "data_cfg.batch_size=0",
        "train_cfg.num_epochs=0",
        "num_workers=0",
        "data_cfg.source=imagenet",
        "accelerator_cfg.accelerator=tpu",
    ],
)
def test_mnist_rejects_out_of_range_values(override):
    with pytest.raises(ConfigValueError) as info:
        build_exp(MnistExp, [override])
    assert override.split("=")[0] in str(info.value)


def test_build_from_import_path_and_errors():
    exp = build_exp("tinyexp_core.examples.mnist_exp:Exp", ["train_cfg.num_epochs=1"])
    assert exp.train_cfg.num_epochs == 1
    assert exp.exp_class == "tinyexp_core.examples.mnist_exp:Exp"
    with pytest.raises(ExperimentImportError):
        build_exp("tinyexp_core.examples.nope:Exp")
    with pytest.raises(ExperimentImportError):
        build_exp("tinyexp_core.config:build_exp")


def test_help_lists_effective_config_and_changes():
    exp = build_exp(MnistExp, ["optimizer_cfg.lr=0.01"])
    text = format_help(exp, exp._changed)
    config_part, changes = text.split("# overridden keys")
    assert OmegaConf.create(config_part).optimizer_cfg.lr == 0.01
    assert "optimizer_cfg.lr: 0.01  (was 0.001)" in changes


def test_set_cfg_compat_raises_on_unknown_key():
    exp = ToyExp()
    exp.set_cfg({"inner_cfg": {"width": 5}})
    assert exp.inner_cfg.width == 5
    with pytest.raises(UnknownConfigurationKeyError):
        exp.set_cfg({"inner_cfg": {"nope": 1}})
    exp.set_cfg(OmegaConf.create({"seed": 4}))
    assert exp.seed == 4


def test_config_dict_round_trips_through_overrides():
    exp = build_exp(MnistExp, ["data_cfg.batch_size=16"])
    flat = dict(_flatten(to_dict(exp)))
    assert set(flat) == set(iter_config_keys(exp))
    rebuilt = build_exp(MnistExp, [f"{k}={_fmt(v)}" for k, v in flat.items() if k != "exp_class"])
    assert dataclasses.asdict(rebuilt.data_cfg) == dataclasses.asdict(exp.data_cfg)


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _fmt(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    return repr(v) if not isinstance(v, list) else str(v)
