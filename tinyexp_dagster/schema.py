"""The experiment's dataclasses as a typed Dagster config schema (`exp`), and back.

The experiment class is the one source of truth for hyperparameters. This module mirrors
its nested `XXXCfg` dataclasses as `dg.Config` (pydantic) models built at definition time,
so the launchpad shows, autocompletes and type-checks `exp: {optimizer_cfg: {lr: 0.001}}`:

- nested dataclasses become nested config shapes; `int`/`float`/`bool`/`str`, `list[...]`
  (tuples too), `dict[str, ...]`, `Optional[...]` keep their types; a `Literal` of strings
  becomes a Dagster enum. A field of any other type is left out of `exp` (still settable
  with `overrides`) and named in its section's description.
- defaults are the dataclass's; descriptions come from the field's trailing comment in
  the source (`lr: float = 1e-3  # for the global batch`), else the comment lines right
  above it, else the sentence of the class docstring that names the field in backticks;
  a section's description is its class docstring.
- fields the orchestrator owns (`tinyexp_core.config.orchestration.ORCHESTRATED_KEYS`: launcher,
  workers, run id, output and resume, ...) are left out: the orchestrator forces them, so a
  value set in `exp` would do nothing.

`exp_values()` is the inverse: the `exp` value -> typed overrides, applied as they are (no
text round trip); `exp_overrides()` renders them as `key=value` text for the run's record.

Neither torch nor the experiment's module is imported here: callers pass the class.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Optional, get_args, get_origin

import dagster as dg
import pydantic

from tinyexp_core.config.orchestration import ORCHESTRATED_KEYS
from tinyexp_core.config.overrides import Override, render_value

__all__ = [
    "ORCHESTRATED_FIELDS",
    "exp_config_fields",
    "exp_config_model",
    "exp_overrides",
    "exp_values",
    "field_descriptions",
    "render_override_value",
    "with_exp_field",
]

# Keys the orchestrator decides and forces as overrides: the one list, in tinyexp_core.
ORCHESTRATED_FIELDS: tuple[str, ...] = ORCHESTRATED_KEYS
# Bookkeeping of the experiment, never configuration (also `_private` fields).
_INTERNAL_FIELDS = frozenset({"overrided_cfg"})
_SKIPPED = object()


# ---------------------------------------------------------------- descriptions


_PRAGMA = re.compile(r"\b(noqa|type:\s*ignore|pragma|fmt:|ty:\s*ignore)\b.*$")


def _clean_comment(comment: str) -> str:
    """A comment's text without `#` and without tool pragmas (`noqa: ...`, `type: ignore`)."""
    return _PRAGMA.sub("", comment.lstrip("#")).strip(" ;")


def _source_comments(klass: type) -> dict[str, str]:
    """Field name -> its trailing comment, else the comment lines just above it."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}  # no source (built dynamically, a REPL): no comments to read
    lines = source.splitlines()
    comments = {t.start[0]: _clean_comment(t.string) for t in tokens if t.type == tokenize.COMMENT}
    node = tree.body[0] if tree.body and isinstance(tree.body[0], ast.ClassDef) else None
    out: dict[str, str] = {}
    for stmt in node.body if node else []:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        # trailing comments, also inside a statement that a formatter split over lines
        span = range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
        trailing = [comments[n] for n in span if comments.get(n)]
        if trailing:
            out[stmt.target.id] = " ".join(trailing)
            continue
        above: list[str] = []
        line = stmt.lineno - 1
        while line >= 1 and lines[line - 1].lstrip().startswith("#") and line in comments:
            if comments[line]:
                above.insert(0, comments[line])
            line -= 1
        if above:
            out[stmt.target.id] = " ".join(above)
    return out


def _own_docstring(klass: type) -> str:
    """The class's own docstring; dataclasses invent `Name(field: type, ...)` when absent."""
    doc = klass.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(f"{klass.__name__}("):
        return ""
    return inspect.cleandoc(doc)


def _docstring_mentions(doc: str, name: str) -> str:
    """The sentence (or `;` clause) of `doc` that names `name` in backticks."""
    for sentence in re.split(r"(?<=[.;])\s+", " ".join(doc.split())):
        if f"`{name}`" in sentence:
            return sentence.rstrip(";")
    return ""


def field_descriptions(klass: type) -> dict[str, str]:
    """Descriptions of a dataclass's fields, base classes' included (subclasses win)."""
    out: dict[str, str] = {}
    for base in reversed(klass.__mro__):
        if dataclasses.is_dataclass(base):
            doc = _own_docstring(base)
            for f in dataclasses.fields(base):
                mention = _docstring_mentions(doc, f.name)
                if mention and f.name not in out:
                    out[f.name] = mention
            out.update(_source_comments(base))
    return out


# ---------------------------------------------------------------- types


def _type_hints(klass: type) -> dict[str, Any]:
    """Resolved annotations; nested config classes resolve through the classes' namespaces."""
    localns: dict[str, Any] = {}
    for base in reversed(klass.__mro__):
        localns.update(vars(base))
    try:
        return typing.get_type_hints(klass, localns=localns)
    except Exception:  # an unresolvable forward reference: those fields are skipped
        return {}


def _annotation(tp: Any) -> Any:
    """The pydantic annotation Dagster can turn into a config type, or _SKIPPED."""
    origin, args = get_origin(tp), get_args(tp)
    if tp in (bool, int, float, str):
        return tp
    if origin is Literal:
        if all(isinstance(a, str) for a in args):
            return tp  # Dagster makes it an enum
        kinds = {type(a) for a in args}
        return kinds.pop() if len(kinds) == 1 and kinds <= {int, float, bool} else _SKIPPED
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1 and len(args) == 2:
            inner = _annotation(members[0])
            return _SKIPPED if inner is _SKIPPED else Optional[inner]  # noqa: UP045
        return _SKIPPED
    if origin in (list, tuple, Sequence, typing.Sequence) and args:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            item_types = set(args)
            if len(item_types) != 1:
                return _SKIPPED
        inner = _annotation(args[0])
        return _SKIPPED if inner is _SKIPPED else list[inner]
    if origin in (dict, Mapping, typing.Mapping) and len(args) == 2 and args[0] is str:
        inner = _annotation(args[1])
        return _SKIPPED if inner is _SKIPPED else dict[str, inner]
    return _SKIPPED


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: how a config value looks after a JSON round trip."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _accepts_none(annotation: Any) -> bool:
    return type(None) in get_args(annotation)


def _null_is(default: Any) -> Any:
    """A pydantic before-validator that reads None as (a copy of) `default`."""

    def validate(value: Any) -> Any:
        return copy.deepcopy(default) if value is None else value

    return validate


def _is_config(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _selected(key: str, exclude: Sequence[str], include: Sequence[str] | None) -> bool:
    name = key.rsplit(".", 1)[-1]
    if name in _INTERNAL_FIELDS or name.startswith("_"):
        return False
    if any(key == e or key.startswith(f"{e}.") for e in exclude):
        return False
    if include is None:
        return True
    return any(key == i or key.startswith(f"{i}.") or i.startswith(f"{key}.") for i in include)


# ---------------------------------------------------------------- schema


def _model_for(
    obj: Any, prefix: str, exclude: Sequence[str], include: Sequence[str] | None
) -> type[dg.Config]:
    klass = type(obj)
    hints = _type_hints(klass)
    docs = field_descriptions(klass)
    definitions: dict[str, Any] = {}
    skipped: list[str] = []
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        if not _selected(key, exclude, include):
            continue
        value = getattr(obj, f.name)
        if _is_config(value):
            nested = _model_for(value, f"{key}.", exclude, include)
            description = docs.get(f.name) or nested.__doc__ or None
            definitions[f.name] = (
                nested,
                pydantic.Field(default_factory=nested, description=description),
            )
            continue
        annotation = _annotation(hints.get(f.name, type(value)))
        if annotation is _SKIPPED:
            skipped.append(
                f"{f.name} ({getattr(hints.get(f.name), '__name__', hints.get(f.name))})"
            )
            continue
        default = _plain(value)
        if not _accepts_none(annotation):
            # Dagster marks every field with a default as nullable; null means the default.
            annotation = Annotated[annotation, pydantic.BeforeValidator(_null_is(default))]
        definitions[f.name] = (
            annotation,
            pydantic.Field(default=default, description=docs.get(f.name) or None),
        )
    doc = _own_docstring(klass)
    if skipped:
        doc += f" Not typed here (set with overrides): {', '.join(skipped)}."
    try:
        model = pydantic.create_model(klass.__name__, __base__=dg.Config, **definitions)
    except (NameError, TypeError, pydantic.PydanticUserError) as err:
        # e.g. a field named like a pydantic attribute (`json`, `schema`, `copy`)
        from tinyexp_core.config.exceptions import ConfigValueError

        raise ConfigValueError(
            prefix.rstrip(".") or klass.__name__,
            sorted(definitions),
            f"field names pydantic accepts ({err})",
        ) from None
    model.__doc__ = doc.strip() or None
    return model


def exp_config_model(
    exp_cls: type,
    *,
    exclude: Sequence[str] = ORCHESTRATED_FIELDS,
    include: Sequence[str] | None = None,
    defaults: Any = None,
) -> type[dg.Config]:
    """A `dg.Config` model mirroring `exp_cls`'s configuration (the value of `exp`).

    `exclude`: dotted keys left out (a section's key drops the section); default
    `ORCHESTRATED_FIELDS`. `include`: when given, only these dotted keys or sections (the
    dataset op passes `("data_cfg", "seed")`). `overrided_cfg` and `_private` fields are
    always left out. `defaults`: an instance whose values are the defaults (a pipeline's
    overrides applied); default `exp_cls()`.
    """
    obj = exp_cls() if defaults is None else defaults
    return _model_for(obj, "", tuple(exclude), None if include is None else tuple(include))


def exp_config_fields(exp_cls: type, **kwargs: Any) -> dict[str, dg.Field]:
    """The same schema as `dg.Field`s: `config_schema={"exp": dg.Field(dg.Shape(fields))}`."""
    return exp_config_model(exp_cls, **kwargs).to_fields_dict()


def with_exp_field(
    base: type[dg.Config],
    exp_cls: type,
    *,
    name: str | None = None,
    description: str | None = None,
    **kwargs: Any,
) -> type[dg.Config]:
    """A subclass of `base` (orchestration fields, `overrides`) with a typed `exp` field.

    Use it as the annotation of an asset's `config` parameter, built inside the factory
    that makes the asset (an annotation written as a string would not resolve).
    """
    model = exp_config_model(exp_cls, **kwargs)
    field = pydantic.Field(
        default_factory=model,
        description=description
        or f"{exp_cls.__name__}'s configuration, applied before `overrides`.",
    )
    return pydantic.create_model(
        name or f"{exp_cls.__name__}{base.__name__}", __base__=base, exp=(model, field)
    )


# ---------------------------------------------------------------- exp -> overrides


# The CLI syntax's rendering lives with the parser (tinyexp_core.config.overrides).
render_override_value = render_value


def _checked(key: str, value: Any, tp: Any) -> Override:
    """`value` for `key`, typed, once its `key=value` text (the run's record) is known to
    read back as the same value."""
    override = Override.typed(key, value)
    if not override.reads_back(tp):
        from tinyexp_core.config.exceptions import ConfigTypeError

        raise ConfigTypeError(key, value, "a value that the key=value syntax can express")
    return override


def exp_values(
    exp_cls: type,
    value: Mapping[str, Any] | pydantic.BaseModel,
    *,
    only_changed: bool = True,
    exclude: Sequence[str] = ORCHESTRATED_FIELDS,
    defaults: Any = None,
) -> list[Override]:
    """The `exp` config value as typed overrides (`tinyexp_core.config.overrides.Override`): the
    values themselves reach the experiment, never a text round trip.

    `only_changed=True` (the default) lists only values that differ from the dataclass
    defaults, so the run's `overrided_cfg` names what the user changed; False lists
    every leaf. Raises UnknownConfigurationKeyError for a key the experiment lacks and
    ConfigValueError for an excluded (orchestrator-owned) key. `defaults`: the instance
    whose values count as unchanged (as given to `exp_config_model`); default `exp_cls()`.
    """
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump()
    out: list[Override] = []
    obj = exp_cls() if defaults is None else defaults
    _collect(obj, value, "", tuple(exclude), only_changed, out)
    return out


def exp_overrides(exp_cls: type, value: Any, **kwargs: Any) -> list[str]:
    """`exp_values()` as `key=value` text in the CLI syntax (for the record and the CLI);
    each reads back (through `tinyexp_core.config`) as the same value."""
    return [str(o) for o in exp_values(exp_cls, value, **kwargs)]


def _collect(
    obj: Any, value: Mapping[str, Any], prefix: str, exclude: tuple, only_changed: bool, out: list
) -> None:
    from tinyexp_core.config.exceptions import ConfigValueError, UnknownConfigurationKeyError

    names = {f.name for f in dataclasses.fields(obj)}
    hints = _type_hints(type(obj))
    for name, item in value.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise UnknownConfigurationKeyError(key)
        if not _selected(key, exclude, None):
            raise ConfigValueError(
                key, item, "not settable through `exp` (the orchestrator sets it)"
            )
        default = getattr(obj, name)
        if _is_config(default):
            if not isinstance(item, Mapping):
                raise ConfigValueError(key, item, "a mapping of the section's fields")
            _collect(default, item, f"{key}.", exclude, only_changed, out)
        elif not (only_changed and _plain(item) == _plain(default)):
            out.append(_checked(key, item, hints.get(name, Any)))
