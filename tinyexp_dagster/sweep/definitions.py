"""What a sweep adds to a pipeline: the trial partitions, the concurrency pool and its
`<name>_sweep_pool_sensor`, `<name>/sweep_leaderboard` (asset, and the live version the
progress sensor emits from the sweep's board), and the validated sweep on the spec.

Each trial is a partition of `<name>/trained_model` and its downstream assets; the training
asset is in the pool `tinyexp_<name>_sweep`, whose limit (the sweep's `max_concurrent`) the
pipeline's `<name>_sweep_pool_sensor` keeps in the Dagster instance, so a backfill's runs
wait in Dagster for a slot, not in Ray's placement queue."""

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg

from tinyexp_core.config.exceptions import ConfigValueError

if TYPE_CHECKING:
    import redis as redis_py

    from tinyexp_dagster.assets.common import PipelineSpec
    from tinyexp_dagster.cli_location import Pipeline

LEADERBOARD = "sweep_leaderboard"
BACKFILL_TAG = "dagster/backfill"
# The runs one `tinyexp-dagster sweep NAME run` launched (sweep/trials.py): one execution.
BATCH_TAG = "tinyexp/sweep_batch"
COLUMNS = ("rank", "trial", "status", "epoch", "metric", "best", "overrides")


def pool_name(pipeline: str) -> str:
    """The Dagster concurrency pool of a pipeline's sweep trainings."""
    return f"tinyexp_{pipeline}_sweep"


def partitions_def(spec: "PipelineSpec") -> dg.StaticPartitionsDefinition | None:
    """One partition per trial (None without a sweep)."""
    return None if spec.sweep is None else dg.StaticPartitionsDefinition(spec.sweep.keys)


def sweep_scope(context: dg.AssetExecutionContext) -> str:
    """The sweep execution a run belongs to: its backfill, the `sweep run` command that
    launched it, or `adhoc` for single runs (pruning compares trials of one execution)."""
    tags = context.run.tags
    return tags.get(BACKFILL_TAG) or tags.get(BATCH_TAG) or "adhoc"


def board_key(pipeline: str, scope: str) -> str:
    """The Redis key prefix of one sweep execution (see tinyexp_core.sweep)."""
    return f"tinyexp:sweep:{pipeline}:{scope}"


def ensure_pool_limit(instance: dg.DagsterInstance, pool: str, limit: int) -> bool:
    """Set the pool's slot count to `limit` unless it already is; returns whether it changed."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    if info.slot_count == limit:
        return False
    instance.event_log_storage.set_concurrency_slots(pool, limit)
    return True


def build_sweep_pool_sensor(spec: "PipelineSpec") -> dg.SensorDefinition:
    """`<name>_sweep_pool_sensor`: keeps the pool's limit at the sweep's max_concurrent."""
    pool, limit = pool_name(spec.name), spec.sweep.max_concurrent

    @dg.sensor(
        name=f"{spec.name}_sweep_pool_sensor",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"{spec.name}: keeps the concurrency pool {pool} at {limit} slots "
        "(the sweep's max_concurrent trainings at once).",
    )
    def sweep_pool_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        changed = ensure_pool_limit(context.instance, pool, limit)
        verb = "set to" if changed else "already"
        return dg.SkipReason(f"pool {pool} {verb} {limit} slots")

    return sweep_pool_sensor


def leaderboard_metadata(rows: list[Mapping[str, Any]], metric: Any) -> dict[str, Any]:
    """The leaderboard as table metadata (ranked rows) plus counts by status."""
    from tinyexp_dagster.assets.common import table

    ranked = []
    for rank, row in enumerate(rows, start=1):
        ranked.append(
            {
                "rank": rank,
                "trial": str(row.get("trial", "")),
                "status": str(row.get("status", "")),
                "epoch": int(row.get("epoch") or 0),
                "metric": _number(row.get("metric")),
                "best": _number(row.get("best")),
                "overrides": str(row.get("overrides", "")),
            }
        )
    statuses = [r["status"] for r in ranked]
    return {
        "leaderboard": table(ranked) if ranked else table([]),
        "primary_metric": f"{metric.name} ({metric.direction})",
        "num_trials": len(ranked),
        **{f"num_{s}": statuses.count(s) for s in sorted(set(statuses))},
        "leader": ranked[0]["trial"] if ranked and ranked[0]["best"] == ranked[0]["best"] else "",
    }


def _number(value: Any) -> float:
    return math.nan if value is None else round(float(value), 4)  # a table to read


def build_sweep_leaderboard(spec: "PipelineSpec") -> dg.AssetsDefinition:
    """`<name>/sweep_leaderboard`: every trial's latest training materialization, ranked by
    the primary metric (the sensor keeps it live from Redis while trials train)."""
    from tinyexp_core.sweep import leaderboard_rows

    metric = spec.primary_metric
    trained = spec.key("trained_model")

    @dg.asset(
        key=spec.key(LEADERBOARD),
        group_name=spec.name,
        deps=[trained],
        kinds={"table"},
        description=f"{spec.name}: the sweep's trials ranked by {metric.name} "
        f"({metric.direction}): overrides, status, epochs, metric.",
    )
    def sweep_leaderboard(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        rows = []
        for trial in spec.sweep.trials:
            row = {"trial": trial.key, "overrides": " ".join(trial.overrides), "status": "queued"}
            records = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=trained, asset_partitions=[trial.key]), limit=1
            ).records
            if records:
                found = records[0].asset_materialization.metadata
                best = found.get(f"best_val_{metric.name}")
                row["status"] = found["sweep_status"].value if "sweep_status" in found else "?"
                row["epoch"] = found["epochs"].value if "epochs" in found else 0
                row["best"] = row["metric"] = best.value if best is not None else None
            rows.append(row)
        ranked = leaderboard_rows(rows, metric.direction)
        return dg.MaterializeResult(metadata=leaderboard_metadata(ranked, metric))

    return sweep_leaderboard


def leaderboard_event(
    client: "redis_py.Redis", board: str, asset: str
) -> dg.AssetObservation | dg.AssetMaterialization:
    """The sweep's leaderboard (`<name>/sweep_leaderboard`, beside the trials' asset) from
    its board: an observation while trials run, a materialization once all have ended."""
    from tinyexp_core.contract import PrimaryMetric
    from tinyexp_core.sweep import SweepBoard

    sweep = SweepBoard(client, board)
    meta = sweep.meta()
    metric = PrimaryMetric(meta.get("metric", "metric"), meta.get("direction", "max"))
    metadata = leaderboard_metadata(sweep.rows(), metric)
    key = dg.AssetKey([*dg.AssetKey.from_user_string(asset).path[:-1], LEADERBOARD])
    if sweep.finished():
        return dg.AssetMaterialization(
            asset_key=key, description=f"sweep {board}: every trial ended", metadata=metadata
        )
    return dg.AssetObservation(asset_key=key, description=f"sweep {board}", metadata=metadata)


def with_sweep(
    spec: "PipelineSpec",
    has: dict[str, bool],
    sweep: Mapping[str, Any] | None,
    max_concurrent: int | None,
    early_stopping: Mapping[str, Any] | None,
) -> "PipelineSpec":
    """The spec with its validated sweep (or without one, refusing sweep-only options)."""
    from tinyexp_core.sweep import build_sweep

    if sweep is None:
        options = {"max_concurrent": max_concurrent, "early_stopping": early_stopping}
        for option, value in options.items():
            if value is not None:
                raise ConfigValueError(option, value, "none: the pipeline has no sweep")
        return spec
    if not has["train"]:
        allowed = f"none: {spec.experiment} has no train() with a primary_metric to rank"
        raise ConfigValueError("sweep", dict(sweep), allowed)
    built = build_sweep(
        spec.exp_cls,
        spec.overrides,
        sweep,
        max_concurrent=max_concurrent,
        early_stopping=early_stopping,
    )
    return dataclasses.replace(spec, sweep=built)


def pool_limit(instance: dg.DagsterInstance, pipeline: "Pipeline") -> int:
    """The pool's slot count after the pipeline's own pool sensor set it (max_concurrent)."""
    pool = pool_name(pipeline.name)
    sensor = pipeline.location.definitions().get_sensor_def(f"{pipeline.name}_sweep_pool_sensor")
    sensor(dg.build_sensor_context(instance=instance))  # sets the limit, as the daemon would
    slots = instance.event_log_storage.get_concurrency_info(pool).slot_count
    return max(1, int(slots or 1))
