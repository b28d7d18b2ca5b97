"""Every field of every Dagster config and resource class says what it does (the launchpad
shows the description), and fixed choices are Literal types whose tuples derive from them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import get_args, get_type_hints

import dagster as dg
import pytest

import tinyexp_dagster

CONFIG_BASES = (dg.Config, dg.ConfigurableResource, dg.ConfigurableIOManager)


def _config_classes() -> list[type]:
    """The Config / resource / IO manager classes defined in tinyexp_dagster's modules."""
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(tinyexp_dagster.__path__, "tinyexp_dagster."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, CONFIG_BASES):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[name] for name in sorted(found)]


CLASSES = _config_classes()


def test_the_known_classes_are_found() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert {"TrainConfig", "DatasetConfig", "RayDDPResource", "RedisProgressResource"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_field_has_a_description(cls: type) -> None:
    fields = cls.model_fields
    assert fields, f"{cls.__name__} has no fields"
    missing = [name for name, f in fields.items() if not (f.description or "").strip()]
    assert not missing, f"{cls.__name__}: fields without a description: {missing}"


def test_choice_tuples_derive_from_their_literals() -> None:
    from tinyexp_core.accelerators import ACCELERATORS, AcceleratorCfg
    from tinyexp_dagster.assets.training import RESUME_CHOICES, TrainConfig
    from tinyexp_dagster.resources.ray import RAY_ACCELERATORS, RayDDPResource

    assert RESUME_CHOICES == get_args(TrainConfig.model_fields["resume"].annotation)
    assert RAY_ACCELERATORS == get_args(RayDDPResource.model_fields["accelerator"].annotation)
    assert get_args(TrainConfig.model_fields["accelerator"].annotation) == (
        "resource",
        *RAY_ACCELERATORS,
    )
    assert ACCELERATORS == get_args(get_type_hints(AcceleratorCfg)["accelerator"])
    assert set(RAY_ACCELERATORS) <= set(ACCELERATORS)
