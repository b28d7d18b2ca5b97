"""Helpers shared by the assets: building the experiment, hashing config, metadata tables."""

import hashlib
import json
from collections.abc import Sequence
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

    def overrides_for(
        self, exp_value: Any, run_overrides: Sequence[str], trial: Sequence[str] = ()
    ) -> list[str]:
        """The pipeline's overrides, the sweep trial's, then the typed `exp` value's
        changes, then the run's; a run may not change a key its trial sets."""
        from tinyexp_core.exceptions import ConfigError, ConfigValueError

        from ..schema import exp_overrides

        try:
            typed = exp_overrides(self.exp_cls, exp_value, defaults=self.defaults)
            swept = {_key(o) for o in trial}
            for override in [*typed, *run_overrides]:
                if _key(override) in swept:
                    raise ConfigValueError(
                        _key(override),
                        override.partition("=")[2],
                        "no change: the sweep trial (the partition) sets it",
                    )
        except ConfigError as err:
            raise config_failure(err) from None
        return [*self.overrides, *trial, *typed, *run_overrides]

    def trial_overrides(self, context: dg.AssetExecutionContext) -> list[str]:
        """The overrides of the run's sweep trial (its partition); [] without a sweep."""
        if self.sweep is None:
            return []
        return self.sweep.trial(context.partition_key).overrides


def build_experiment(experiment: str, overrides: Sequence[str], forced: Sequence[str] = ()) -> Any:
    """The experiment with the user's overrides, then the orchestrator's; a bad override
    fails the step (without retries) before any Ray or Redis resource is touched.

    A user override of a key the orchestrator decides (workers, accelerator, paths...) is
    refused rather than silently replaced: the run record must state what ran."""
    from tinyexp_core.config import build_exp
    from tinyexp_core.exceptions import ConfigError, ConfigValueError

    try:
        decided = {_key(o) for o in forced}
        for override in overrides:
            key = _key(override)
            if key in decided:
                raise ConfigValueError(
                    key,
                    override.partition("=")[2],
                    "no override: the orchestrator sets it (use the op config's field or "
                    "the resource's, e.g. num_workers, accelerator, resume)",
                )
        return build_exp(experiment, [*overrides, *forced])
    except ConfigError as err:
        raise config_failure(err) from None


def _key(override: str) -> str:
    from tinyexp_core.config import parse_override

    return parse_override(override)[0]


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
