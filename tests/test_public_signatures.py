"""No `Any` in the public signatures of the Dagster resources and the training session.

Every public method, property and annotated attribute of the classes that experiment
and pipeline code calls into (the resources under `tinyexp_dagster/resources/`, the
`TrainingSession` and its `RunContext`) names its real type: the experiment, torch's
module/optimizer/scheduler/tensor, the accelerator, a Protocol, or `object` for values
that really are arbitrary.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import tinyexp_dagster.resources

ANY = re.compile(r"\bAny\b")
# Dunders whose parameters are part of the public surface too.
PUBLIC_DUNDERS = {"__init__", "__enter__", "__exit__", "__call__"}
SESSION_MODULES = ("tinyexp_core.training.session", "tinyexp_core.training.context")


def _resource_modules() -> list[ModuleType]:
    package = tinyexp_dagster.resources
    names = [m.name for m in pkgutil.iter_modules(package.__path__)]
    return [importlib.import_module(f"{package.__name__}.{name}") for name in sorted(names)]


def _modules() -> list[ModuleType]:
    return _resource_modules() + [importlib.import_module(name) for name in SESSION_MODULES]


def _text(annotation: object) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _signature_texts(func: Callable[..., object]) -> Iterator[tuple[str, str]]:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return
    for name, param in signature.parameters.items():
        yield name, _text(param.annotation)
    yield "return", _text(signature.return_annotation)


def _public(name: str) -> bool:
    return not name.startswith("_") or name in PUBLIC_DUNDERS


def _own_classes(module: ModuleType) -> list[type]:
    return [
        obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
    ]


def _attribute_annotations(cls: type) -> Iterator[tuple[str, str]]:
    """The class body's `name: T` and `self.name: T` in its methods, as written (a
    Dagster field's annotation, evaluated, is Dagster's own expansion)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if not node.target.id.startswith("_"):
                yield node.target.id, ast.unparse(node.annotation)
    for node in ast.walk(tree):
        target = getattr(node, "target", None)
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
            and not target.attr.startswith("_")
        ):
            yield f"self.{target.attr}", ast.unparse(node.annotation)


def any_in_public_api(module: ModuleType) -> list[str]:
    """`module.Class.member (part): annotation` for every public annotation naming Any."""
    found: list[str] = []

    def check(where: str, texts: Iterator[tuple[str, str]]) -> None:
        found.extend(f"{where} ({part}): {text}" for part, text in texts if ANY.search(text))

    for name, obj in vars(module).items():
        if inspect.isfunction(obj) and obj.__module__ == module.__name__ and _public(name):
            check(f"{module.__name__}.{name}", _signature_texts(obj))
    for cls in _own_classes(module):
        where = f"{module.__name__}.{cls.__name__}"
        check(where, _attribute_annotations(cls))
        for name, member in vars(cls).items():
            if not _public(name):
                continue
            if isinstance(member, property) and member.fget is not None:
                check(f"{where}.{name}", _signature_texts(member.fget))
            elif isinstance(member, (staticmethod, classmethod)):
                check(f"{where}.{name}", _signature_texts(member.__func__))
            elif inspect.isfunction(member) and member.__module__ == module.__name__:
                # not pydantic's `model_post_init`, put on a model with private attributes
                check(f"{where}.{name}", _signature_texts(member))
    return found


def test_the_scan_covers_the_resources_and_the_session() -> None:
    classes = {cls.__name__ for module in _modules() for cls in _own_classes(module)}
    expected = {
        "RayDDPResource",
        "RedisProgressResource",
        "StorageResource",
        "StallSettingsResource",
        "RunScopedJSONIOManager",
        "TrainingSession",
        "RunContext",
    }
    assert expected <= classes


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_no_any_in_public_signatures(module: ModuleType) -> None:
    found = any_in_public_api(module)
    assert not found, "`Any` in public signatures; name the real type:\n" + "\n".join(found)


class _WithAny:
    """What the scan must flag (4 places), and must not (the private method)."""

    field: Any = None

    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}

    def run(self, exp: Any) -> None: ...

    @property
    def model(self) -> Any: ...

    def _private(self, x: Any) -> Any: ...


def test_the_check_finds_any() -> None:
    """The scan itself: `Any` in a parameter, a return, a property or an attribute is found."""
    module = ModuleType(__name__)  # the class's source is read from this file
    module.Resource = _WithAny  # type: ignore[attr-defined]
    found = any_in_public_api(module)
    assert len(found) == 4, found
    assert any("(field)" in line for line in found)
    assert any("self.extra" in line for line in found)
    assert any(".run (exp)" in line for line in found)
    assert any(".model (return)" in line for line in found)
