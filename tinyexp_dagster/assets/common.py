"""Helpers shared by the assets: building the experiment, hashing config, metadata tables."""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from tinyexp_core.redaction import redact_overrides, redact_text

DEFAULT_EXPERIMENT = "tinyexp_core.examples.mnist_exp:Exp"


@dataclass(frozen=True)
class PipelineSpec:
    """One pipeline: its name (asset key prefix, group, job and trigger prefix), the
    experiment class and its import path, and the pipeline's own overrides (applied first)."""

    name: str
    experiment: str  # `package.module:Class`
    exp_cls: type
    overrides: tuple[str, ...] = ()
    # The experiment with the pipeline's overrides: the launchpad's `exp` defaults, and what
    # a run's `exp` value is compared with (so an untouched field keeps the pipeline's value).
    defaults: Any = None
    sweep: Any = None  # a tinyexp_core.sweep.Sweep: one partition per trial; None: no sweep

    def key(self, asset: str) -> dg.AssetKey:
        """`<name>/<asset>`."""
        return dg.AssetKey([self.name, asset])

    @property
    def primary_metric(self) -> Any:
        """The experiment's PrimaryMetric, or None (a `run()`-only experiment)."""
        return getattr(self.exp_cls, "primary_metric", None)

    def run_overrides(self, exp_value: Any, run_overrides: Sequence[str], trial: Any = None) -> Any:
        """The run's `tinyexp_core.config.orchestration.RunOverrides`, each override parsed once:
        the pipeline's overrides, the sweep trial's values (a `Trial`: typed), the typed
        `exp` value's changes, then the run's; a run may not change a key its trial sets.
        A bad one is a step failure (not retried)."""
        from tinyexp_core.config.exceptions import ConfigError
        from tinyexp_core.config.orchestration import RunOverrides
        from tinyexp_dagster.schema import exp_values

        try:
            return RunOverrides.of(
                pipeline=self.overrides,
                trial=getattr(trial, "values", trial) or (),  # a Trial, or its overrides
                typed=exp_values(self.exp_cls, exp_value, defaults=self.defaults),
                run=run_overrides,
            )
        except ConfigError as err:
            raise config_failure(err) from None

    def overrides_for(
        self, exp_value: Any, run_overrides: Sequence[str], trial: Any = None
    ) -> list[str]:
        """`run_overrides(...)` as `key=value` text: the run's record."""
        return self.run_overrides(exp_value, run_overrides, trial).texts()

    def trial(self, context: dg.AssetExecutionContext) -> Any:
        """The run's sweep trial (its partition); None without a sweep."""
        if self.sweep is None:
            return None
        return self.sweep.trial(context.partition_key)


def build_experiment(
    experiment: str | type, overrides: Any, forced: Mapping[str, Any] | None = None
) -> Any:
    """The experiment (a class, or an import path read from a record) with the user's
    overrides (a `RunOverrides`, or `key=value` text), then the orchestrator's `forced`
    values; a bad override fails the step (without retries) before any Ray or Redis
    resource is touched. A user override of a forced key is refused rather than silently
    replaced: the run record must state what ran."""
    from tinyexp_core.config.exceptions import ConfigError
    from tinyexp_core.config.factory import load_exp_class
    from tinyexp_core.config.orchestration import RunOverrides

    try:
        exp_cls = load_exp_class(experiment) if isinstance(experiment, str) else experiment
        if not isinstance(overrides, RunOverrides):
            overrides = RunOverrides.of(run=overrides)
        return overrides.build(exp_cls, forced)
    except ConfigError as err:
        raise config_failure(err) from None


def config_failure(err: Exception, what: str = "invalid configuration") -> dg.Failure:
    """A step failure that says what was wrong and is not retried (retrying cannot help);
    a value it quotes has its URL credentials hidden."""
    message = redact_text(str(err))
    return dg.Failure(
        description=f"{what}: {message}",
        metadata={"error": message, "error_type": type(err).__name__},
        allow_retries=False,
    )


def config_hash(experiment: str, overrides: Sequence[str], data_version: str) -> str:
    """A short, stable digest of what determines a trained model. A credential in a URL
    does not (and a digest of it would let anyone test guesses), so it is hidden first."""
    payload = json.dumps(
        {"experiment": experiment, "overrides": redact_overrides(overrides), "data": data_version},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def table(rows: list[dict[str, Any]]) -> dg.MetadataValue:
    """Rows of scalars as Dagster table metadata (typed columns, rendered in the UI)."""
    if not rows:
        return dg.MetadataValue.table(records=[], schema=dg.TableSchema(columns=[]))
    columns = [dg.TableColumn(name, _column_type(rows[0][name])) for name in rows[0]]
    records = [dg.TableRecord({k: _cell(v) for k, v in row.items()}) for row in rows]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns))


def _column_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "string"


def _cell(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)
