"""`champion_gate`: the blocking check on `<name>/model_checkpoint` that moves the champion.

The new version and the current champion are scored on the same split, the VALIDATION split
of the new version's prepared dataset (the test split stays for `model_evaluation`), with the
experiment's `evaluate()`; an experiment without `evaluate()` is compared on the validation
value each version recorded at training. The alias moves when the newcomer is at least as
good as the champion within `tolerance` (in the primary metric's units); a worse version
stays registered, the alias stays, and the check fails with ERROR severity, which blocks
`model_evaluation` and everything downstream. The first version becomes champion.

In a sweep most trials lose to the best one by design: a losing trial's check fails with
WARN severity (still registered, not champion, the gap in the metadata) so its partition
run succeeds; a damaged file fails with ERROR there too.
"""

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dagster as dg

from tinyexp_core.registry import ModelRegistry, ModelVersion
from tinyexp_dagster.assets.common import PipelineSpec
from tinyexp_dagster.resources import StorageResource
from tinyexp_dagster.sweep import partitions_def

CHAMPION_GATE_CHECK = "champion_gate"
GATE_SPLIT = "val"


def build_champion_gate(
    spec: PipelineSpec, tolerance: float, *, evaluates: bool
) -> dg.AssetChecksDefinition:
    """`champion_gate` on `<name>/model_checkpoint` (blocking)."""
    metric = spec.primary_metric
    how = "evaluate() on the validation split" if evaluates else "the recorded validation value"

    @dg.asset_check(
        asset=spec.key("model_checkpoint"),
        blocking=True,
        name=CHAMPION_GATE_CHECK,
        partitions_def=partitions_def(spec),  # a sweep: each trial's version is gated
        description=f"Champion gate: the new version becomes champion when its {metric.name} "
        f"({how}) is at least as good as the champion's, within {tolerance:g}.",
    )
    def model_checkpoint_champion_gate(
        context: dg.AssetCheckExecutionContext,
        model_checkpoint: dict[str, Any],
        storage: StorageResource,
    ) -> dg.AssetCheckResult:
        new = ModelVersion.from_dict(model_checkpoint)  # the asset's value: a plain dict
        moved_by = (
            f"{spec.name}/model_checkpoint:{CHAMPION_GATE_CHECK} (dagster run {context.run.run_id})"
        )
        score = _evaluator(spec, new, evaluates)
        # a sweep's losing trial is the normal case, not a failed run (see the module doc)
        lost = dg.AssetCheckSeverity.WARN if spec.sweep is not None else None
        return gate(storage, new, score, tolerance, moved_by, log=context.log, lost=lost)

    return model_checkpoint_champion_gate


def _evaluator(
    spec: PipelineSpec, new: ModelVersion, evaluates: bool
) -> Callable[[ModelVersion], float]:
    """version record -> its primary metric on the gate's split."""
    if not evaluates:
        return lambda record: math.nan if record.val_value is None else record.val_value
    from tinyexp_dagster.assets.evaluation import evaluate_checkpoint

    def score(record: ModelVersion) -> float:
        # the champion's own experiment and overrides rebuild its model; the data is the
        # newcomer's, so both are scored on the same samples
        scored = replace(record, dataset_path=new.dataset_path)
        return evaluate_checkpoint(spec, scored, GATE_SPLIT).value

    return score


def gate(
    storage: StorageResource,
    new: ModelVersion,
    score: Callable[[ModelVersion], float],
    tolerance: float,
    moved_by: str,
    log: Any = None,
    lost: dg.AssetCheckSeverity | None = None,
) -> dg.AssetCheckResult:
    """Compare `new` (the model_checkpoint value's record) with the champion; move the alias
    or not. `lost`: the severity of a verdict "worse than the champion" (default ERROR)."""
    from tinyexp_core.checkpoint import verify_checkpoint
    from tinyexp_core.config.exceptions import TinyExpError

    metric = new.primary_metric
    registry = ModelRegistry(storage.models_dir(), new.name)
    version = new.version
    with registry.locked():
        champion = registry.champion_version()
        meta: dict[str, Any] = {
            "split": GATE_SPLIT,
            "new_version": version,
            "tolerance": tolerance,
            "champion_before": champion or "none",
        }
        if champion == version:
            return _result(True, meta, champion, f"{version} is the champion already")
        try:
            verify_checkpoint(new.path)  # a damaged file never becomes champion
            new_value = float(score(new))
            old_value = math.nan if champion is None else float(score(registry.version(champion)))
        except (TinyExpError, OSError) as err:
            problem = f"{version} not compared, champion unchanged: {type(err).__name__}: {err}"
            return _result(False, meta, champion, problem)
        meta[f"new_{metric.name}"] = _finite(new_value)
        if champion is not None:
            meta[f"champion_{metric.name}"] = _finite(old_value)
            # > 0: the newcomer is better, < 0: it lost by that much (in the metric's direction)
            gap = new_value - old_value if metric.direction == "max" else old_value - new_value
            meta["gap"] = _finite(gap)
        if not metric.is_at_least_as_good(new_value, old_value, tolerance):
            lost_by = _lost_by(version, champion, metric.name, new_value, old_value, meta)
            return _result(False, meta, champion, lost_by, severity=lost)
        reason = (
            f"first version: {metric.name} {new_value:.4f} on {GATE_SPLIT}"
            if champion is None
            else f"{metric.name} {new_value:.4f} vs champion {champion}'s {old_value:.4f} on "
            f"{GATE_SPLIT} (tolerance {tolerance:g})"
        )
        registry.move_champion(version, moved_by=moved_by, reason=reason)
        if log is not None:
            log.info(f"champion of {new.name} moved to {version}: {reason}")
        meta["moved_by"] = moved_by
        return _result(True, meta, version, f"{version} is the new champion: {reason}")


def _lost_by(
    version: str, champion: str, name: str, new: float, old: float, meta: dict[str, Any]
) -> str:
    """Why `version` did not become champion, in one sentence."""
    return (
        f"{version} lost: {name} {new:.4f} vs champion {champion}'s {old:.4f} on {GATE_SPLIT} "
        f"(worse by {-meta.get('gap', math.nan):.4f}, tolerance {meta['tolerance']:g}); it "
        "stays registered, not champion"
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _result(
    passed: bool,
    meta: dict[str, Any],
    champion: str | None,
    description: str,
    severity: dg.AssetCheckSeverity | None = None,
) -> dg.AssetCheckResult:
    meta = {k: v for k, v in {**meta, "champion": champion or "none"}.items() if v is not None}
    return dg.AssetCheckResult(
        check_name=CHAMPION_GATE_CHECK,
        passed=passed,
        severity=severity or dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata=meta,
    )
