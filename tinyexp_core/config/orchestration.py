"""What an orchestrator decides for a run, and the one way it builds the run's experiment.

An orchestrated run's config comes in layers, applied in this order: the pipeline's
overrides, the sweep trial's values, the typed config's changes (Dagster's `exp`), the
run's overrides, then the orchestrator's forced values. `RunOverrides` holds the first
four, each parsed once (text) or kept as given (typed values, never rendered and parsed
back); `RunOverrides.build` applies them and the forced values to the experiment class
itself. `ORCHESTRATED_KEYS` is the one list of keys an orchestrator owns: the typed config
leaves them out, a sweep may not vary them, and only they may be forced.

`experiment_accelerator` picks the accelerator a run forces from what the experiment's own
accelerator config takes (TinyExp 0.0.1's knows `cpu` and `ddp`, not `auto`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.config.overrides import Override

__all__ = [
    "ORCHESTRATED_KEYS",
    "RunOverrides",
    "accelerator_choices",
    "experiment_accelerator",
    "is_orchestrated",
]

# Keys an orchestrator decides and forces as overrides (the run record still shows them):
# where and how the ranks run, where the run directory is, what it resumes from, which
# prepared data it reads, and the progress store (whose URL may hold a password).
ORCHESTRATED_KEYS: tuple[str, ...] = (
    "exp_class",
    "mode",
    "launcher",
    "num_workers",
    "num_cpus_per_worker",
    "num_gpus_per_worker",
    "ray_address",
    "output_root",
    "run_id",
    "resume_from",
    "accelerator_cfg.accelerator",
    "accelerator_cfg.collective_timeout_s",
    "data_cfg.prepared_path",
    "progress_cfg.url",
    "progress_cfg.throttle_s",
    "progress_cfg.finished_ttl_s",
)
_TRIAL_OWNS = "no change: the sweep trial (the partition) sets it"
_ORCHESTRATOR_OWNS = (
    "no override: the orchestrator sets it (use the op config's field or the resource's, "
    "e.g. num_workers, accelerator, resume)"
)
Layer = Sequence[str | Override | tuple[str, Any]]


def is_orchestrated(key: str) -> bool:
    """Whether an orchestrator owns the dotted `key`."""
    return key in ORCHESTRATED_KEYS


def _parsed(items: Layer) -> tuple[Override, ...]:
    """Text parsed (once), `(key, value)` pairs typed, Overrides as they are."""
    out = []
    for item in items:
        if isinstance(item, Override):
            out.append(item)
        elif isinstance(item, str):
            out.append(Override.parse(item))
        else:
            out.append(Override.typed(*item))
    return tuple(out)


@dataclass(frozen=True)
class RunOverrides:
    """One run's user config layers, each override parsed once, in the order they apply."""

    pipeline: tuple[Override, ...] = ()
    trial: tuple[Override, ...] = ()
    typed: tuple[Override, ...] = ()
    run: tuple[Override, ...] = ()

    @classmethod
    def of(
        cls, *, pipeline: Layer = (), trial: Layer = (), typed: Layer = (), run: Layer = ()
    ) -> RunOverrides:
        """The layers from text (`key=value`), `(key, value)` pairs or Overrides; a typed
        or run value for a key the sweep trial sets raises ConfigValueError."""
        layers = cls(_parsed(pipeline), _parsed(trial), _parsed(typed), _parsed(run))
        swept = {o.key for o in layers.trial}
        for override in (*layers.typed, *layers.run):
            if override.key in swept:
                raise ConfigValueError(override.key, _shown(override), _TRIAL_OWNS)
        return layers

    def all(self) -> tuple[Override, ...]:
        """Every user override, in application order."""
        return (*self.pipeline, *self.trial, *self.typed, *self.run)

    def texts(self) -> list[str]:
        """The overrides as `key=value` text: the run's record (what the checkpoint and the
        config hash keep), rebuilding the same values when parsed."""
        return [str(o) for o in self.all()]

    def build(self, exp_cls: type, forced: Mapping[str, Any] | None = None) -> Any:
        """The experiment (the class itself, not its import path) with these overrides, then
        the orchestrator's `forced` values. A user override of a forced key is refused
        rather than silently replaced: the run record must state what ran."""
        from tinyexp_core.config.factory import build_exp

        forced = dict(forced or {})
        for key in forced:
            if not is_orchestrated(key):
                raise ConfigValueError("forced", key, ORCHESTRATED_KEYS)
        for override in self.all():
            if override.key in forced:
                raise ConfigValueError(override.key, _shown(override), _ORCHESTRATOR_OWNS)
        decided = [Override.typed(k, v) for k, v in forced.items()]
        return build_exp(exp_cls, [*self.all(), *decided])


def _shown(override: Override) -> Any:
    """The value as the user wrote it (the text after `=`), else the typed value."""
    return override.text.partition("=")[2] if override.text else override.value


# ---------------------------------------------------------------- accelerator


def accelerator_choices(cfg: Any) -> tuple[str, ...] | None:
    """The values an accelerator config's `accelerator` field takes: a `Literal`'s choices,
    else the strings its `build_accelerator` compares `self.accelerator` with (TinyExp
    0.0.1: `accelerator: str = "cpu"`, then `if self.accelerator == "cpu": ... elif ==
    "ddp": ... else: raise`); None when neither tells."""
    hints = _hints(type(cfg))
    tp = hints.get("accelerator")
    if get_origin(tp) is Literal:
        return tuple(str(a) for a in get_args(tp))
    build = getattr(type(cfg), "build_accelerator", None)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(build)))
    except (OSError, TypeError, SyntaxError):
        return None  # no source to read (built dynamically): nothing known
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and _is_self_accelerator(node.left):
            for op, right in zip(node.ops, node.comparators, strict=True):
                if isinstance(op, (ast.Eq, ast.In)):
                    found += _strings(right)
    return tuple(dict.fromkeys(found)) or None


def _hints(klass: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(klass)
    except Exception:  # an unresolvable forward reference: read the field's runtime type
        return {f.name: type(f.default) for f in dataclasses.fields(klass)}


def _is_self_accelerator(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "accelerator"
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _strings(elt)]
    return []


def experiment_accelerator(
    requested: str, choices: Sequence[str] | None, num_workers: int
) -> tuple[str | None, str]:
    """The accelerator to force for a run that asks for `requested` (`auto`, `cpu`,
    `ddp`) on `num_workers` ranks, given what the experiment's config takes (`choices`),
    and why: `requested` when it takes it; for `auto` it does not take, `ddp` on more than
    one rank and `cpu` on one. None: nothing is forced (the choices are unknown). A choice
    it cannot take raises ConfigValueError naming the experiment's own choices."""
    if choices is None:
        return None, (
            f"accelerator_cfg.accelerator not set: the experiment's accelerator config does "
            f"not say which values it takes ({requested!r} asked for)"
        )
    if requested in choices:
        return requested, f"accelerator_cfg.accelerator={requested} (as asked)"
    if requested == "auto":
        pick = "ddp" if num_workers > 1 else "cpu"
        if pick in choices:
            return pick, (
                f"accelerator_cfg.accelerator={pick}: the experiment's accelerator config "
                f"takes {', '.join(choices)} (not auto); {pick} for {num_workers} worker(s)"
            )
    raise ConfigValueError("accelerator_cfg.accelerator", requested, tuple(choices))
