"""Turn `(experiment class, ["key=value", ...])` into a validated experiment instance.

One entry point, used by the CLI and by Dagster alike: `build_exp`. The override
machinery itself (parsing, type checks, the `validate()` hook) lives in `overrides`,
which `experiment` uses too; this module adds the experiment factory and help printing.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from tinyexp_core.config.exceptions import ExperimentImportError
from tinyexp_core.config.experiment import TinyExp
from tinyexp_core.config.overrides import (
    INTERNAL_FIELDS,
    Override,
    apply_overrides,
    coerce,
    iter_config_keys,
    parse_override,
    render_value,
    to_dict,
    to_yaml,
    validate,
)
from tinyexp_core.redaction import redact_value

__all__ = [
    "INTERNAL_FIELDS",
    "Override",
    "apply_overrides",
    "build_exp",
    "coerce",
    "format_help",
    "iter_config_keys",
    "load_exp_class",
    "parse_override",
    "render_value",
    "to_dict",
    "to_yaml",
    "validate",
]


def format_help(exp: Any, changed: dict[str, tuple[Any, Any]]) -> str:
    """Effective config as YAML, then the overridden keys with old and new values
    (credentials inside URLs hidden)."""
    lines = [f"# {type(exp).__module__}.{type(exp).__qualname__}: effective config", to_yaml(exp)]
    lines.append("# overridden keys" if changed else "# overridden keys: none")
    for key, (old, new) in changed.items():
        lines.append(f"{key}: {redact_value(new)!r}  (was {redact_value(old)!r})")
    return "\n".join(lines).rstrip() + "\n"


def load_exp_class(path: str) -> type:
    """Import `package.module:Class` or `package.module.Class` and check it is a TinyExp."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ExperimentImportError(path, "expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ExperimentImportError(
            path, f"module {module_name!r} not importable ({err})"
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ExperimentImportError(path, f"module {module_name!r} has no attribute {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, TinyExp)):
        raise ExperimentImportError(path, f"{attr!r} is not a TinyExp subclass")
    return cls


def build_exp(exp: type | str, overrides: Sequence[str | Override] = ()) -> Any:
    """Instantiate an experiment (class or import path), apply the overrides (`key=value`
    text, parsed once, or `Override`s), then run every nested config's `validate()`;
    raises a ConfigError before anything runs."""
    cls = load_exp_class(exp) if isinstance(exp, str) else exp
    instance = cls()
    if not instance.exp_class:
        instance.exp_class = f"{cls.__module__}:{cls.__qualname__}"
    changed = apply_overrides(instance, list(overrides))
    # A record of what was overridden (0.0.1 logs it): credentials hidden, like every record.
    instance.overrided_cfg = redact_value({k: v[1] for k, v in changed.items()})
    instance._changed = changed
    return instance
