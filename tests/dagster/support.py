"""Helpers of the Dagster tests: tiny run config, resources, the shared `Pipeline`, events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from tinyexp_dagster import pipeline_defs
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    StallSettingsResource,
    StorageResource,
)

NAME = "mnist"  # the project's default pipeline, as tinyexp_dagster/defs/mnist declares it
PIPELINE = ["prepared_dataset", "trained_model", "model_checkpoint", "model_evaluation"]
TINY_OVERRIDES = ["train_cfg.num_epochs=1"]
# One epoch reaches ~0.9 test accuracy; the blocking accuracy check must not fail the fixture.
TINY_CONFIG: dict[str, dict[str, Any]] = {
    "trained_model": {"overrides": TINY_OVERRIDES},
    "model_evaluation": {"threshold": 0.5},
}
# The session's tests retrain many configs in one instance: each new version becomes champion
# (tolerance 1.0 in accuracy), so evaluation always scores the latest one. The gate itself is
# tested at tolerance 0 in test_champion.py.
MNIST_DEFS = pipeline_defs(
    NAME, "tinyexp_core.examples.mnist_exp:Exp", metric_threshold=0.9, champion_tolerance=1.0
)
ASSETS = list(MNIST_DEFS.assets)
ASSET_CHECKS = list(MNIST_DEFS.asset_checks)


def key(asset: str) -> dg.AssetKey:
    """`mnist/<asset>`."""
    return dg.AssetKey([NAME, asset])


def op(asset: str) -> str:
    """The op name of `mnist/<asset>` (run config keys)."""
    return f"{NAME}__{asset}"


def dagster_resources(storage_root: Path | str, redis_url: str) -> dict[str, Any]:
    """The pipeline's resources on the session's Ray (2 workers) and Redis."""
    return {
        "ray": RayDDPResource(num_workers=2, num_cpus_per_worker=1),
        "redis": RedisProgressResource(url=redis_url),
        "storage": StorageResource(root=str(storage_root)),
        "stalls": StallSettingsResource(),
    }


def run_config(selection: Sequence[str], **ops: dict[str, Any]) -> dict[str, Any]:
    """Op config of the selected assets: the tiny defaults, replaced field by field by
    `ops[asset]` (Dagster rejects config for assets outside the selection)."""
    config = {}
    for asset in selection:
        fields = {**TINY_CONFIG.get(asset, {}), **ops.get(asset, {})}
        if fields:
            config[op(asset)] = {"config": fields}
    return {"ops": config}


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetMaterialization]:
    """The run's materializations by asset name without the pipeline prefix (the last one
    per asset)."""
    return {
        event.asset_key.path[-1]: event.materialization
        for event in result.get_asset_materialization_events()
    }


def step_failures(result: dg.ExecuteInProcessResult, step: str) -> list[dg.DagsterEvent]:
    """Failures of the step of `mnist/<step>` (or of the step named `step`)."""
    steps = {step, op(step)}
    return [e for e in result.all_events if e.is_step_failure and e.step_key in steps]


def error_chain(event: dg.DagsterEvent) -> str:
    """`ClassName: message` of a step failure's error and of its causes, one per line."""
    lines = []
    error = event.step_failure_data.error
    while error is not None:
        lines.append(f"{error.cls_name}: {error.message.strip()}")
        error = error.cause or error.context
    return "\n".join(lines)


@contextlib.contextmanager
def flipped_byte(path: Path | str) -> Iterator[Path]:
    """`path` with its middle byte inverted (same size, other sha256), restored on exit."""
    path = Path(path)
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    try:
        path.write_bytes(bytes(damaged))
        yield path
    finally:
        path.write_bytes(original)


@dataclass
class Pipeline:
    """A Dagster instance and storage root in which the whole pipeline was materialized."""

    instance: dg.DagsterInstance
    storage_root: Path
    resources: dict[str, Any]
    redis_url: str
    result: dg.ExecuteInProcessResult

    def materialize(
        self,
        selection: Sequence[str] | dg.AssetSelection,
        *,
        raise_on_error: bool = True,
        resources: dict[str, Any] | None = None,
        **ops: dict[str, Any],
    ) -> dg.ExecuteInProcessResult:
        """Materialize `selection` (asset names, or checks only) in this instance, with
        `run_config(selection, **ops)`; upstream values load from the instance's IO manager."""
        names = [] if isinstance(selection, dg.AssetSelection) else list(selection)
        return dg.materialize(
            [*ASSETS, *ASSET_CHECKS],
            selection=selection
            if isinstance(selection, dg.AssetSelection)
            else [key(n) for n in names],
            instance=self.instance,
            resources={**self.resources, **(resources or {})},
            run_config=run_config(names, **ops),
            raise_on_error=raise_on_error,
        )

    def latest(self, asset: str) -> dg.AssetMaterialization:
        """The instance's latest materialization of `asset`."""
        event = self.instance.get_latest_materialization_event(key(asset))
        assert event is not None and event.asset_materialization is not None
        return event.asset_materialization


def _asset(asset: str) -> dg.AssetsDefinition:
    [found] = [a for a in ASSETS if a.key == key(asset)]
    return found


# The mnist pipeline's assets, for `dg.materialize([...])`.
prepared_dataset = _asset("prepared_dataset")
trained_model = _asset("trained_model")
