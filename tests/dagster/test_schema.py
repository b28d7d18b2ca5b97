"""`tinyexp_dagster.schema`: the experiment's dataclasses as the typed `exp` config."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import dagster as dg
import pytest

from tinyexp_core.config.exceptions import ConfigTypeError, ConfigValueError
from tinyexp_core.config.experiment import TinyExp
from tinyexp_core.config.factory import build_exp
from tinyexp_dagster.schema import (
    ORCHESTRATED_FIELDS,
    exp_config_fields,
    exp_config_model,
    exp_overrides,
    field_descriptions,
    with_exp_field,
)


@dataclass(repr=False)
class KitchenExp(TinyExp):
    """Every supported field type, for the schema's type mapping."""

    exp_name: str = "kitchen"

    @dataclass
    class NetCfg:
        """The network; `width` is per layer."""

        width: int = 64
        sizes: list[int] = field(default_factory=lambda: [32, 16])  # hidden layers, input first
        shape: tuple[int, ...] = (3, 4)
        act: Literal["relu", "gelu"] = "relu"
        # Scale of the init; None keeps the layer's own.
        init_scale: Optional[float] = None  # noqa: UP045 (Optional, as older code spells it)
        tags: list[str] = field(default_factory=list)
        ratio: float | None = 0.5
        flag: bool = True
        label: str = "net"
        momentum_of_the_running_statistics: float = (
            0.1  # kept in parentheses by the formatter: the comment is long enough to need it
        )

    net_cfg: NetCfg = field(default_factory=NetCfg)


def _mnist():
    from tinyexp_core.examples.mnist_exp import Exp

    return Exp


def _leaf(fields: dict, dotted: str) -> dg.Field:
    *sections, name = dotted.split(".")
    for section in sections:
        fields = fields[section].config_type.fields
    return fields[name]


def _scalar(config_type) -> str:
    """The config type's name, under Dagster's nullable wrapper for defaulted fields
    (ints, strs and bools are `IntSource`-style unions: a value or `{env: VAR}`)."""
    inner = getattr(config_type, "inner_type", config_type)
    inner = getattr(inner, "scalar_type", inner)
    return inner.given_name or inner.kind.name


def test_mnist_lr_is_a_float_with_its_default_and_comment():
    fields = exp_config_fields(_mnist())
    lr = _leaf(fields, "optimizer_cfg.lr")
    assert _scalar(lr.config_type) == "Float"
    assert lr.default_value == 1e-3
    assert "learning rate for the whole (global) batch" in lr.description
    assert _leaf(fields, "train_cfg.num_epochs").default_value == 5
    assert _leaf(fields, "data_cfg.batch_size").description == "per rank"  # trailing comment
    assert fields["optimizer_cfg"].description.startswith("Optimizer")  # class docstring
    step = _leaf(fields, "lr_scheduler_cfg.step_size")
    assert (_scalar(step.config_type), step.description) == ("Int", "epochs")


def test_orchestrated_and_internal_fields_are_left_out():
    fields = exp_config_fields(_mnist())
    for key in ("mode", "launcher", "num_workers", "output_root", "run_id", "resume_from"):
        assert key in ORCHESTRATED_FIELDS and key not in fields
    assert "overrided_cfg" not in fields and "exp_class" not in fields
    assert "prepared_path" not in fields["data_cfg"].config_type.fields
    assert "url" not in fields["progress_cfg"].config_type.fields
    assert "accelerator" not in fields["accelerator_cfg"].config_type.fields
    # the exclusion list is a parameter: nothing left out but the internal fields
    everything = exp_config_fields(_mnist(), exclude=())
    assert {"mode", "num_workers", "run_id"} <= set(everything)
    assert "overrided_cfg" not in everything
    # the dataset op's view: the data section and the seed only
    data_only = exp_config_fields(_mnist(), include=("data_cfg", "seed"))
    assert set(data_only) == {"data_cfg", "seed"}


def test_types_map_to_dagster_config_types():
    fields = exp_config_fields(KitchenExp)
    net = fields["net_cfg"].config_type.fields
    assert net["act"].config_type.kind.name == "ENUM"
    assert sorted(v.config_value for v in net["act"].config_type.enum_values) == ["gelu", "relu"]
    assert _scalar(net["sizes"].config_type) == "ARRAY" and net["sizes"].default_value == [32, 16]
    assert net["shape"].default_value == [3, 4]
    assert net["init_scale"].config_type.kind.name == "NONEABLE"
    assert net["init_scale"].description == "Scale of the init; None keeps the layer's own."
    assert net["sizes"].description == "hidden layers, input first"
    assert net["width"].description == "`width` is per layer."  # the clause naming it
    assert _scalar(net["flag"].config_type) == "Bool"
    assert _scalar(net["label"].config_type) == "String"
    assert net["momentum_of_the_running_statistics"].description.startswith("kept in paren")


def test_tabular_schema_and_the_dataset_view():
    from tinyexp_core.examples.tabular_exp import Exp

    fields = exp_config_fields(Exp)
    hidden = _leaf(fields, "module_cfg.hidden_sizes")
    assert _scalar(hidden.config_type) == "ARRAY" and hidden.default_value == [64, 32]
    assert "primary_metric" not in fields  # a ClassVar, not configuration
    data = exp_config_fields(Exp, include=("data_cfg", "seed"))
    assert set(data) == {"data_cfg", "seed"}
    assert "prepared_path" not in data["data_cfg"].config_type.fields
    overrides = exp_overrides(Exp, {"module_cfg": {"hidden_sizes": [128, 64, 32]}})
    assert overrides == ["module_cfg.hidden_sizes=[128,64,32]"]
    assert build_exp(Exp, overrides).module_cfg.hidden_sizes == [128, 64, 32]


def test_field_descriptions_read_base_classes():
    from dataclasses import dataclass

    @dataclass(repr=False)
    class Sub(_mnist()):
        num_workers: int = 2  # used with launcher=ray

    docs = field_descriptions(Sub)
    assert docs["num_workers"] == "used with launcher=ray"  # the subclass's comment wins
    assert "seed" not in docs  # no comment, no mention: no invented description
    assert "checkpoint path" in docs["resume_from"]  # TinyExp's own comment, inherited


def _probe_asset(exp_cls, seen: dict):
    class ProbeConfig(dg.Config):
        """Orchestration beside `exp`."""

        overrides: list[str] = []
        num_workers: int = 1

    config_cls = with_exp_field(ProbeConfig, exp_cls)

    @dg.asset
    def probe(config: config_cls) -> None:  # type: ignore[valid-type]
        seen["lr"] = config.exp.optimizer_cfg.lr
        seen["overrides"] = [*exp_overrides(exp_cls, config.exp), *config.overrides]

    return probe


def test_asset_reads_exp_and_round_trips_to_the_experiment():
    seen: dict = {}
    probe = _probe_asset(_mnist(), seen)
    run_config = {
        "ops": {
            "probe": {
                "config": {
                    "exp": {"optimizer_cfg": {"lr": 0.001 * 3, "name": "sgd"}, "seed": 7},
                    "overrides": ["train_cfg.num_epochs=2"],
                }
            }
        }
    }
    assert dg.materialize([probe], run_config=run_config).success
    assert seen["lr"] == pytest.approx(0.003)
    # only what differs from the defaults, then the user's overrides
    assert seen["overrides"] == [
        "seed=7",
        "optimizer_cfg.name=sgd",
        f"optimizer_cfg.lr={0.001 * 3!r}",
        "train_cfg.num_epochs=2",
    ]
    exp = build_exp(_mnist(), seen["overrides"])
    assert exp.optimizer_cfg.lr == 0.001 * 3 and exp.optimizer_cfg.name == "sgd"
    assert exp.seed == 7 and exp.train_cfg.num_epochs == 2
    assert set(exp.overrided_cfg) == {
        "seed",
        "optimizer_cfg.name",
        "optimizer_cfg.lr",
        "train_cfg.num_epochs",
    }


def test_wrong_type_and_unknown_enum_value_are_refused_before_the_step():
    seen: dict = {}
    probe = _probe_asset(_mnist(), seen)
    job = dg.Definitions(assets=[probe]).resolve_implicit_global_asset_job_def()
    for bad in ({"lr": "fast"}, {"name": "rmsprop"}):
        run_config = {"ops": {"probe": {"config": {"exp": {"optimizer_cfg": bad}}}}}
        with pytest.raises(dg.DagsterInvalidConfigError) as err:
            dg.validate_run_config(job, run_config)
        assert "optimizer_cfg" in str(err.value)
        with pytest.raises(dg.DagsterInvalidConfigError):
            dg.materialize([probe], run_config=run_config)
    assert seen == {}  # the step never ran
    # null is Dagster's "not set" for a defaulted field: the default applies
    ok = {"ops": {"probe": {"config": {"exp": {"optimizer_cfg": {"lr": None}}}}}}
    assert dg.materialize([probe], run_config=ok).success and seen["lr"] == 1e-3


def test_every_type_round_trips_through_the_cli_syntax():
    value = {
        "net_cfg": {
            "width": 128,
            "sizes": [8, 4, 2],
            "shape": [5, 6],
            "act": "gelu",
            "init_scale": 1e-05,
            "tags": ["a b", "c,d", "1"],
            "ratio": None,
            "flag": False,
            "label": "x, y z",
        },
        "exp_name": "kitchen2",
    }
    model = exp_config_model(KitchenExp)
    overrides = exp_overrides(KitchenExp, model(**value))
    exp = build_exp(KitchenExp, overrides)
    net = exp.net_cfg
    assert (net.width, net.sizes, net.shape, net.act) == (128, [8, 4, 2], (5, 6), "gelu")
    assert (net.init_scale, net.tags, net.ratio, net.flag) == (
        1e-05,
        ["a b", "c,d", "1"],
        None,
        False,
    )
    assert net.label == "x, y z" and exp.exp_name == "kitchen2"
    # all leaves, defaults included, when asked
    every = exp_overrides(KitchenExp, {"net_cfg": {"width": 64}}, only_changed=False)
    assert every == ["net_cfg.width=64"]
    assert exp_overrides(KitchenExp, {"net_cfg": {"width": 64}}) == []


def test_inverse_refuses_what_it_cannot_express():
    with pytest.raises(ConfigValueError, match="'num_workers'.*orchestrator"):
        exp_overrides(_mnist(), {"num_workers": 4})
    for text in ("[unbalanced", "a: 1"):  # YAML reads no str back from these
        with pytest.raises(ConfigTypeError, match="'net_cfg.label'.*key=value syntax"):
            exp_overrides(KitchenExp, {"net_cfg": {"label": text}})
