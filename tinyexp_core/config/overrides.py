"""Key=value overrides applied to nested config dataclasses, checked and rendered.

Values are parsed with OmegaConf's YAML grammar (so `lr=1e-3`, `flag=true` and
`sizes=[1,2]` mean what they look like), then checked against the dataclass field types,
including `Literal[...]` choices; then every nested config's `validate()` runs. Nothing
here knows the experiment class: `factory.build_exp` and `TinyExp` both build on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from omegaconf import OmegaConf

from tinyexp_core.config.exceptions import (
    ConfigError,
    ConfigTypeError,
    ConfigValueError,
    OverrideSyntaxError,
    UnknownConfigurationKeyError,
)
from tinyexp_core.redaction import redact_value

# Fields of the experiment that are bookkeeping, not configuration.
INTERNAL_FIELDS = frozenset({"overrided_cfg", "hydra"})
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


MAX_OVERRIDE_CHARS = 64 * 1024  # a config value, not a payload: larger ones are refused


def _check_text(override: str) -> None:
    """Refuse an override that is too long or not text (undecodable bytes from argv arrive
    as lone surrogates), naming its key and showing its value in a form that prints."""
    key, sep, value = override.partition("=")
    if not sep or not _KEY_RE.match(key.strip().lstrip("+")):
        key, value = "override", override
    if len(override) > MAX_OVERRIDE_CHARS:
        shown = f"{value[:40]}... ({len(value)} characters)"
        raise ConfigValueError(key, shown, f"at most {MAX_OVERRIDE_CHARS} characters")
    try:
        override.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        raise ConfigValueError(key, shown, "UTF-8 text") from None


def parse_override(override: str) -> tuple[str, Any, str]:
    """Split `key=value` into the key, the YAML-typed value and the raw text."""
    _check_text(override)
    key, sep, raw = override.partition("=")
    key = key.strip().lstrip("+")
    if not sep or not _KEY_RE.match(key):
        raise OverrideSyntaxError(override)
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]))["v"]
    return key, parsed, raw


@dataclass(frozen=True)
class Override:
    """One override, parsed once: its dotted key, its value (YAML-typed when it came as
    text, exactly as given when typed) and the raw text a `str` field takes (None: typed).

    Text from a user goes through `parse()` once; a value that is already typed (a sweep
    trial's, a typed config's, an orchestrator's) goes through `typed()` and is never
    rendered and parsed back, so a float reaches the experiment bit-identical."""

    key: str
    value: Any
    raw: str | None = None
    text: str = ""  # as the user wrote it; empty when typed

    @classmethod
    def parse(cls, text: str) -> Override:
        """`key=value` in the CLI syntax (OmegaConf's YAML grammar)."""
        key, value, raw = parse_override(text)
        return cls(key, value, raw, text)

    @classmethod
    def typed(cls, key: str, value: Any) -> Override:
        """A typed value for the dotted `key` (type-checked when applied)."""
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise OverrideSyntaxError(f"{key}={value!r}")
        return cls(key, value)

    def __str__(self) -> str:
        """The override in the `key=value` syntax (a typed float rendered with repr, which
        reads back as the same float)."""
        return self.text or f"{self.key}={render_value(self.value)}"

    def reads_back(self, tp: Any) -> bool:
        """Whether `str(self)` parses back, as type `tp`, to this value: always for numbers,
        bools and None (repr); checked with one parse for a value holding text (`[a` or
        `a: 1` would read as something else)."""
        if self.raw is not None or not _holds_text(self.value):
            return True
        try:
            _, parsed, raw = parse_override(str(self))
            back = coerce(self.key, parsed, tp, raw)
        except Exception:  # YAML rejected the text or read another type
            return False
        return _as_lists(back) == _as_lists(self.value)


def _holds_text(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_text(v) for v in value)
    if isinstance(value, Mapping):
        return any(_holds_text(v) for v in value.values())
    return False


def _as_lists(value: Any) -> Any:
    """Tuples as lists, recursively (a tuple field's value equals its list form)."""
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _as_lists(v) for k, v in value.items()}
    return value


def render_value(value: Any) -> str:
    """A value in the CLI's `key=value` syntax (OmegaConf's YAML grammar); floats by repr,
    so the text parses back to the same float."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value  # a str field takes the raw text
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_render_item(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}: {_render_item(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {type(value).__name__} {value!r} as an override value")


def _render_item(value: Any) -> str:
    import json

    return json.dumps(value) if isinstance(value, str) else render_value(value)


def iter_config_keys(obj: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted leaf key of a config dataclass (nested configs expanded)."""
    for f in dataclasses.fields(obj):
        if f.name in INTERNAL_FIELDS or f.name.startswith("_"):
            continue
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from iter_config_keys(value, prefix=f"{key}.")
        else:
            yield key


def _field_types(obj: Any) -> dict[str, Any]:
    """Resolved annotations of a dataclass instance, tolerant of nested class names."""
    cls = type(obj)
    localns: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        localns.update(vars(klass))
    try:
        # no globalns: each base class's annotations resolve in its own module
        return typing.get_type_hints(cls, localns=localns)
    except Exception:  # unresolvable forward refs: fall back to the runtime values' types
        return {f.name: type(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any, raw: str | None = None) -> Any:
    """Convert a parsed override value to the declared type, or raise a ConfigError."""
    origin = get_origin(tp)
    if origin is Literal:
        return _coerce_literal(key, value, get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(key, value, get_args(tp), raw)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigTypeError(key, value, "a list like [a,b]")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigTypeError(key, value, "a mapping like {a: 1}")
        return dict(value)
    if tp is str:
        return _coerce_str(key, value, raw)
    return _coerce_scalar(key, value, tp)


def _coerce_literal(key: str, value: Any, allowed: tuple) -> Any:
    for choice in allowed:
        if value == choice or (isinstance(choice, str) and str(value) == choice):
            return choice
    raise ConfigValueError(key, value, allowed)


def _coerce_union(key: str, value: Any, members: tuple, raw: str | None) -> Any:
    if value is None and type(None) in members:
        return None
    for member in members:
        if member is type(None):
            continue
        try:
            return coerce(key, value, member, raw)
        except ConfigError:
            continue
    raise ConfigTypeError(key, value, " or ".join(_type_name(m) for m in members))


def _coerce_str(key: str, value: Any, raw: str | None) -> str:
    if value is None:
        if raw is not None and raw.strip() == "":
            return ""
        raise ConfigTypeError(key, value, "str")
    if isinstance(value, (list, dict)):
        raise ConfigTypeError(key, value, "str")
    # YAML may have read `name=123` as an int; for a str field the text is what was meant.
    return raw if raw is not None else str(value)


def _coerce_scalar(key: str, value: Any, tp: Any) -> Any:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is Any or (
        isinstance(tp, type) and tp not in (bool, int, float) and isinstance(value, tp)
    ):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and is_number and isinstance(value, int):
        return value
    if tp is float and is_number:
        return float(value)
    expected = "bool (true or false)" if tp is bool else _type_name(tp)
    raise ConfigTypeError(key, value, expected)


def _resolve(exp: Any, key: str) -> tuple[Any, str, Any]:
    """Find the dataclass holding `key`, the field name and its declared type."""
    parts = key.split(".")
    obj = exp
    for depth, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(obj)} - INTERNAL_FIELDS
        if part not in names:
            raise UnknownConfigurationKeyError(key, _suggest(exp, key))
        if depth == len(parts) - 1:
            return obj, part, _field_types(obj).get(part, Any)
        child = getattr(obj, part)
        if not dataclasses.is_dataclass(child):
            raise UnknownConfigurationKeyError(key, _suggest(exp, key))
        obj = child
    raise UnknownConfigurationKeyError(key)  # unreachable: parts is never empty


def _suggest(exp: Any, key: str) -> str | None:
    keys = list(iter_config_keys(exp))
    leaf = key.rsplit(".", 1)[-1]
    matches = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not matches:
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
        leaf_match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
        matches = [by_leaf[leaf_match[0]]] if leaf_match else []
    return matches[0] if matches else None


def apply_overrides(exp: Any, overrides: Sequence[str | Override]) -> dict[str, tuple[Any, Any]]:
    """Apply overrides in place: `key=value` text (parsed here, once) or an `Override`
    (parsed or typed already); returns {key: (old, new)} for changed keys."""
    changed: dict[str, tuple[Any, Any]] = {}
    for override in overrides:
        parsed = override if isinstance(override, Override) else Override.parse(override)
        key, value, raw = parsed.key, parsed.value, parsed.raw
        holder, name, tp = _resolve(exp, key)
        current = getattr(holder, name)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            raise ConfigTypeError(key, value, "a nested config; set its fields as key.field=value")
        new = coerce(key, value, tp, raw)
        if new != current:
            old = changed[key][0] if key in changed else current
            setattr(holder, name, new)
            changed[key] = (old, new)
    validate(exp)
    return changed


def validate(obj: Any, prefix: str = "") -> None:
    """Run every nested config's `validate()` hook, innermost first; the one validation
    path, run after all overrides. An error is re-raised with its full dotted key."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, prefix=f"{prefix}{f.name}.")
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ConfigValueError as err:
            if prefix and not err.key.startswith(prefix):
                err.rekey(f"{prefix}{err.key}")
            raise


def to_dict(obj: Any) -> dict[str, Any]:
    """The configuration as a plain nested dict (internal fields left out), with the values
    the experiment runs with; `TinyExp.config_dict()` is the record, credentials hidden."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name in INTERNAL_FIELDS or f.name.startswith("_"):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def to_yaml(obj: Any) -> str:
    """The effective configuration as YAML, URL credentials hidden (what `mode=help`
    prints, runs log and `config.yaml` holds)."""
    return OmegaConf.to_yaml(OmegaConf.create(redact_value(to_dict(obj))))
