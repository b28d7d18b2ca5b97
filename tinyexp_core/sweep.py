"""Hyperparameter sweeps: trials from a grid or a random search, checked against the
experiment before anything runs; their per-epoch metrics shared in Redis; median pruning.

A sweep is a mapping, as in a pipeline's `sweep=` or a component's YAML:

- a grid: `{"optimizer_cfg.lr": [0.001, 0.003], "module_cfg.dropout": [0.1, 0.25]}` (or the
  same under `grid:`): every combination is a trial;
- a random search: `{"random": {"params": {"optimizer_cfg.lr": {"low": 1e-4, "high": 1e-2,
  "log": True}, "module_cfg.dropout": [0.1, 0.25]}, "num_trials": 8, "seed": 0}}`: a range
  draws a number (int fields draw ints), a list draws one of its values.

Each trial has a readable, stable key (`lr=0.001;dropout=0.1`; a short hash when that is too
long) and its overrides (`optimizer_cfg.lr=0.001`, ...), applied after the pipeline's own.

Early stopping (`{"warmup_epochs": E}`): after E epochs, a trial whose primary metric at
epoch k is worse than the median of the other trials' metrics at epoch k is stopped (the
caller requests a checkpoint-then-stop and records it as `pruned`).

Redis keys of one sweep execution (`tinyexp:sweep:<pipeline>:<scope>`, scope: the backfill, the
`tinyexp-dagster sweep run` batch, or `adhoc`):
`...:trials` (hash: trial key -> JSON row), `...:epochs` (hash: `<epoch>|<trial>` -> metric),
`...:meta` (hash: num_trials, metric, direction).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tinyexp_core.config.exceptions import ConfigError, ConfigValueError
from tinyexp_core.config.orchestration import is_orchestrated

__all__ = [
    "EarlyStopping",
    "Sweep",
    "SweepBoard",
    "Trial",
    "TRIAL_STATUSES",
    "build_sweep",
    "leaderboard_rows",
    "should_prune",
]

MAX_KEY_CHARS = 60  # longer trial keys become `trial-<hash>` (the overrides stay in metadata)
TRIAL_STATUSES = ("queued", "running", "finished", "pruned", "failed")
FINAL_TRIAL_STATUSES = ("finished", "pruned", "failed")
_SWEEP_KEY_PREFIX = "tinyexp:sweep:"
_TTL_S = 7 * 24 * 3600
_RANDOM_FIELDS = ("params", "num_trials", "seed")
_RANGE_FIELDS = ("low", "high", "log")


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: its partition key and the values it sets (dotted keys)."""

    key: str
    values: tuple[tuple[str, Any], ...]

    @property
    def overrides(self) -> list[str]:
        """The trial's experiment overrides as `key=value` text (floats by repr: the text
        reads back as the same float); a run applies `values` themselves."""
        from tinyexp_core.config.overrides import render_value

        return [f"{k}={render_value(v)}" for k, v in self.values]


@dataclass(frozen=True)
class EarlyStopping:
    """Median pruning: from epoch `warmup_epochs` on, a trial worse than the median of the
    others at the same epoch stops (with at least `min_trials` others to compare with)."""

    warmup_epochs: int = 1  # epochs every trial runs before it can be pruned
    min_trials: int = 1  # other trials that must have reached the epoch

    def __post_init__(self) -> None:
        for name in ("warmup_epochs", "min_trials"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigValueError(f"early_stopping.{name}", value, "an integer >= 1")

    @classmethod
    def from_value(cls, value: Any) -> EarlyStopping | None:
        """None (off), an EarlyStopping, or a mapping of its fields."""
        if value is None or isinstance(value, EarlyStopping):
            return value
        if not isinstance(value, Mapping):
            raise ConfigValueError("early_stopping", value, "a mapping like {warmup_epochs: 1}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigValueError(f"early_stopping.{unknown[0]}", value[unknown[0]], sorted(known))
        return cls(**value)


@dataclass(frozen=True)
class Sweep:
    """The trials of one pipeline's sweep, how many may train at once, and early stopping."""

    trials: tuple[Trial, ...]
    max_concurrent: int
    early_stopping: EarlyStopping | None = None

    @property
    def keys(self) -> list[str]:
        """The trials' partition keys, in sweep order."""
        return [t.key for t in self.trials]

    def trial(self, key: str) -> Trial:
        """The trial of a partition key."""
        for trial in self.trials:
            if trial.key == key:
                return trial
        raise ConfigValueError("partition", key, self.keys)


def build_sweep(
    exp_cls: type,
    base_overrides: Sequence[str],
    sweep: Mapping[str, Any],
    *,
    max_concurrent: int | None = None,
    early_stopping: Any = None,
) -> Sweep:
    """The sweep's trials, each checked by building the experiment with its overrides (the
    experiment's own `validate()` runs): a bad key, type or value raises a ConfigValueError
    naming it, before any run starts."""
    from tinyexp_core.config.factory import build_exp
    from tinyexp_core.config.overrides import Override

    if not isinstance(sweep, Mapping) or not sweep:
        raise ConfigValueError("sweep", sweep, "a non-empty mapping: a grid or {random: ...}")
    base = [Override.parse(o) if isinstance(o, str) else o for o in base_overrides]  # once
    defaults = build_exp(exp_cls, base)
    if set(sweep) == {"grid"}:
        trials = _grid(defaults, sweep["grid"])
    elif set(sweep) == {"random"}:
        trials = _random(defaults, sweep["random"])
    else:
        trials = _grid(defaults, sweep)
    keys = [t.key for t in trials]
    if len(set(keys)) != len(keys):
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        raise ConfigValueError("sweep", duplicated[0], "distinct trials (this one repeats)")
    for trial in trials:
        try:
            build_exp(exp_cls, [*base, *(Override.typed(*v) for v in trial.values)])
        except ConfigError as err:
            raise ConfigValueError(
                f"sweep trial {trial.key}", trial.overrides, f"values the experiment accepts: {err}"
            ) from None
    if max_concurrent is None:
        max_concurrent = len(trials)
    if not _is_int(max_concurrent) or max_concurrent < 1:
        raise ConfigValueError("max_concurrent", max_concurrent, "an integer >= 1")
    return Sweep(tuple(trials), max_concurrent, EarlyStopping.from_value(early_stopping))


def _grid(defaults: Any, grid: Any) -> list[Trial]:
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigValueError("sweep.grid", grid, "a non-empty mapping of key -> list of values")
    axes = []
    for key, values in grid.items():
        kind = _field_type(defaults, key)
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigValueError(f"sweep.{key}", values, "a non-empty list of values")
        axes.append([(key, _typed(key, v, kind)) for v in values])
    return [_trial(combo) for combo in itertools.product(*axes)]


def _random(defaults: Any, spec: Any) -> list[Trial]:
    if not isinstance(spec, Mapping):
        raise ConfigValueError("sweep.random", spec, "a mapping with params, num_trials, seed")
    unknown = sorted(set(spec) - set(_RANDOM_FIELDS))
    if unknown:
        raise ConfigValueError(f"sweep.random.{unknown[0]}", spec[unknown[0]], _RANDOM_FIELDS)
    params, num_trials, seed = spec.get("params"), spec.get("num_trials"), spec.get("seed", 0)
    if not isinstance(params, Mapping) or not params:
        raise ConfigValueError("sweep.random.params", params, "a non-empty mapping")
    if not _is_int(num_trials) or num_trials < 1:
        raise ConfigValueError("sweep.random.num_trials", num_trials, "an integer >= 1")
    if not _is_int(seed):
        raise ConfigValueError("sweep.random.seed", seed, "an integer")
    draws = {key: _sampler(key, value, _field_type(defaults, key)) for key, value in params.items()}
    rng = random.Random(seed)
    trials = [_trial([(key, draw(rng)) for key, draw in draws.items()]) for _ in range(num_trials)]
    return trials


def _sampler(key: str, spec: Any, kind: type) -> Any:
    """A function drawing one value of `key` from a list of choices or a {low, high} range."""
    where = f"sweep.random.params.{key}"
    if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)) and spec:
        choices = [_typed(key, v, kind) for v in spec]
        return lambda rng: rng.choice(choices)
    if not isinstance(spec, Mapping) or not {"low", "high"} <= set(spec) <= set(_RANGE_FIELDS):
        raise ConfigValueError(where, spec, "a non-empty list, or {low, high, log (optional)}")
    if kind not in (int, float):
        raise ConfigValueError(where, spec, f"a list of choices ({key} is a {kind.__name__})")
    low, high = _typed(key, spec["low"], kind), _typed(key, spec["high"], kind)
    log = spec.get("log")
    if not low < high or (log and low <= 0) or not isinstance(log, (bool, type(None))):
        raise ConfigValueError(where, spec, "low < high (both > 0 with log: true)")
    if kind is int:
        return lambda rng: rng.randint(low, high)
    if log:
        return lambda rng: float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")
    return lambda rng: float(f"{rng.uniform(low, high):.3g}")


def _field_type(defaults: Any, key: Any) -> type:
    """The type of the dotted `key`'s default value; a key that names no field, or one the
    orchestrator decides, raises naming the fields allowed there."""
    if not isinstance(key, str) or not key:
        raise ConfigValueError("sweep", key, "dotted config keys like optimizer_cfg.lr")
    if is_orchestrated(key):
        raise ConfigValueError("sweep", key, "a hyperparameter (the orchestrator sets this key)")
    node, parts = defaults, key.split(".")
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
        if part not in names:
            where = ".".join(parts[:depth]) or type(defaults).__name__
            raise ConfigValueError(f"sweep.{key}", part, f"a field of {where}: {sorted(names)}")
        node = getattr(node, part)
    if dataclasses.is_dataclass(node) or not isinstance(node, (bool, int, float, str)):
        allowed = "a bool, int, float or str field"
        raise ConfigValueError(f"sweep.{key}", type(node).__name__, allowed)
    return type(node)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _typed(key: str, value: Any, kind: type) -> Any:
    """`value` as the field's type (an int for a float field is fine), else an error."""
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigValueError(f"sweep.{key}", value, f"a {kind.__name__} (the field's type)")
    if kind is float and not math.isfinite(value):
        raise ConfigValueError(f"sweep.{key}", value, "a finite number")
    return value


def _text(value: Any) -> str:
    """A value as a trial key shows it: a float short (`%g`) when that reads back as the
    same float, else by repr (two values never share a key by rounding)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def _trial(values: Sequence[tuple[str, Any]]) -> Trial:
    names = [k.rsplit(".", 1)[-1] for k, _ in values]
    # The last part of the key names the value when it is unambiguous (lr, dropout).
    shown = [n if names.count(n) == 1 else k for n, (k, _) in zip(names, values, strict=True)]
    key = ";".join(f"{s}={_text(v)}" for s, (_, v) in zip(shown, values, strict=True))
    if len(key) > MAX_KEY_CHARS or any(c in key for c in ",[]|"):
        digest = hashlib.sha256(json.dumps(list(values), default=str).encode()).hexdigest()[:10]
        key = f"trial-{digest}"
    return Trial(key, tuple(values))


# ---------------------------------------------------------------- pruning and ranking


def is_worse(value: float, other: float, direction: str) -> bool:
    """Whether `value` is strictly worse than `other` (NaN is worse than anything)."""
    if math.isnan(value):
        return not math.isnan(other)
    return value < other if direction == "max" else value > other


def should_prune(
    value: float, others: Sequence[float], direction: str, epoch: int, rule: EarlyStopping
) -> bool:
    """Median pruning at 1-based `epoch`: past the warm-up, with enough other trials at the
    same epoch, a value worse than their median stops the trial."""
    finite = [v for v in others if not math.isnan(v)]
    if epoch < rule.warmup_epochs or len(others) < rule.min_trials or not finite:
        return False
    return is_worse(value, statistics.median(finite), direction)


def leaderboard_rows(rows: Sequence[Mapping[str, Any]], direction: str) -> list[dict[str, Any]]:
    """The trials' rows, best `best` first in the metric's direction; trials without a
    metric last, in sweep order."""

    def rank(row: Mapping[str, Any]) -> tuple[int, float]:
        best = row.get("best")
        if best is None or (isinstance(best, float) and math.isnan(best)):
            return (1, 0.0)
        return (0, -best if direction == "max" else best)

    return [dict(r) for r in sorted(rows, key=rank)]


# ---------------------------------------------------------------- Redis


class SweepBoard:
    """One sweep execution's shared state in Redis: each trial's row (status, epoch,
    metric, best so far) and every trial's primary metric per epoch. Redis errors
    propagate: callers decide (the trainer's monitor is best effort, sensors skip)."""

    def __init__(self, client: Any, key: str) -> None:
        if not key.startswith(_SWEEP_KEY_PREFIX):
            raise ConfigValueError("sweep board key", key, f"a key under {_SWEEP_KEY_PREFIX}")
        self.client = client
        self.key = key

    def declare(self, sweep: Sweep, metric: str, direction: str) -> None:
        """Record the sweep's size and metric; trials not seen yet are `queued`."""
        pipe = self.client.pipeline(transaction=True)
        meta = {"num_trials": len(sweep.trials), "metric": metric, "direction": direction}
        pipe.hset(f"{self.key}:meta", mapping=meta)
        for trial in sweep.trials:
            row = {"trial": trial.key, "overrides": " ".join(trial.overrides), "status": "queued"}
            pipe.hsetnx(f"{self.key}:trials", trial.key, json.dumps(row))
        for suffix in ("meta", "trials", "epochs"):
            pipe.expire(f"{self.key}:{suffix}", _TTL_S)
        pipe.execute()

    def update(self, trial: str, **fields: Any) -> None:
        """Merge `fields` into the trial's row (read-modify-write by one writer per trial)."""
        raw = self.client.hget(f"{self.key}:trials", trial)
        row = json.loads(raw) if raw else {"trial": trial}
        row.update(fields, updated=time.time())
        self._write(f"{self.key}:trials", trial, json.dumps(row))

    def record_epoch(self, trial: str, epoch: int, value: float) -> None:
        """The trial's primary metric at 1-based `epoch`."""
        self._write(f"{self.key}:epochs", f"{epoch}|{trial}", repr(float(value)))

    def _write(self, key: str, field: str, value: str) -> None:
        """One field, and the key's TTL again: a hash first created here (the epochs of a
        board declared before any epoch ended) must expire like the rest of the board."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, field, value)
        pipe.expire(key, _TTL_S)
        pipe.execute()

    def others_at(self, trial: str, epoch: int) -> list[float]:
        """The other trials' metrics at 1-based `epoch`."""
        values = []
        for field, text in self.client.hgetall(f"{self.key}:epochs").items():
            at, _, name = field.partition("|")
            if at == str(epoch) and name != trial:
                values.append(float(text))
        return values

    def meta(self) -> dict[str, str]:
        """num_trials, metric and direction ({} before `declare`)."""
        return dict(self.client.hgetall(f"{self.key}:meta"))

    def rows(self) -> list[dict[str, Any]]:
        """Every trial's row, sorted by the best metric so far in the sweep's direction."""
        raw = self.client.hgetall(f"{self.key}:trials")
        rows = [json.loads(v) for v in raw.values()]
        return leaderboard_rows(rows, self.meta().get("direction", "max"))

    def finished(self) -> bool:
        """Whether every declared trial has a final status."""
        rows, meta = self.rows(), self.meta()
        if not meta or len(rows) < int(meta.get("num_trials", 0)):
            return False
        return all(r.get("status") in FINAL_TRIAL_STATUSES for r in rows)
