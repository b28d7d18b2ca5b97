"""`<name>/model_evaluation`: the CHAMPION version, loaded from its file, on a split.

The champion is read from the registry when the step runs (the `champion_gate` check moved
it, or `tinyexp-dagster promote` did); the metadata compares it, as a markdown table, with
the new version when the gate kept that one out, else with the champion it replaced.

Scored with the experiment's own `evaluate()` and primary metric (`accuracy`/max,
`rmse`/min, ...); with a threshold, the blocking `minimum_metric` check compares the
primary metric with it in the metric's direction."""

from dataclasses import replace
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from tinyexp_core.registry import ModelRegistry, ModelVersion, UnknownModelError
from tinyexp_dagster.assets.common import PipelineSpec, build_experiment, table
from tinyexp_dagster.assets.outcome import cancelled_if_terminated
from tinyexp_dagster.resources import RedisProgressResource, StorageResource
from tinyexp_dagster.sweep import partitions_def

MIN_METRIC_CHECK = "minimum_metric"
DEFAULT_SPLIT = "test"


class EvaluationConfig(dg.Config):
    """Which split to score."""

    split: Literal["train", "val", "test"] = Field(
        default=DEFAULT_SPLIT, description="the prepared dataset's split to score"
    )


def build_model_evaluation(spec: PipelineSpec, threshold: float | None) -> dg.AssetsDefinition:
    """The pipeline's evaluation asset; with `threshold`, its blocking minimum-metric check
    (the threshold is in the primary metric's units; a run can change it in the config)."""
    metric = spec.primary_metric
    config_cls = EvaluationConfig
    checks = []
    if threshold is not None:
        bound = ">=" if metric.direction == "max" else "<="
        config_cls = _with_threshold(spec, threshold, bound)
        checks = [
            dg.AssetCheckSpec(
                MIN_METRIC_CHECK,
                asset=spec.key("model_evaluation"),
                blocking=True,
                description=f"{metric.name} on the scored split is {bound} the threshold "
                f"({threshold:g} unless the run sets another).",
            )
        ]

    @dg.asset(
        key=spec.key("model_evaluation"),
        group_name=spec.name,
        code_version="1",
        kinds={"pytorch"},
        check_specs=checks,
        ins={"model_checkpoint": dg.AssetIn(spec.key("model_checkpoint"))},
        partitions_def=partitions_def(spec),  # a sweep: each trial's model
        description=f"{spec.name}: {metric.name} ({metric.direction}) and loss of the "
        "champion model, loaded from its file, compared with the new version.",
    )
    def model_evaluation(
        context: dg.AssetExecutionContext,
        config: config_cls,
        model_checkpoint: dict[str, Any],
        storage: StorageResource,
        redis: RedisProgressResource,
    ):
        new = ModelVersion.from_dict(model_checkpoint)  # the asset's value: a plain dict
        with cancelled_if_terminated(context, redis, storage):
            champion, other = champion_and_other(storage, new)
            # the data of this pipeline run (the champion may be trained on older data)
            scored = replace(champion, dataset_path=new.dataset_path)
            result = evaluate_checkpoint(spec, scored, config.split)
        context.log.info(
            f"{config.split} {metric.name} {result.value:.4f} of champion "
            f"{champion.version} ({champion.path})"
        )
        metadata = evaluation_metadata(result, champion)
        metadata["champion_version"] = champion.version
        if other is not None:
            scored_other = replace(other, dataset_path=new.dataset_path)
            metadata["comparison"] = dg.MetadataValue.md(
                comparison_markdown(spec, result, champion, scored_other, config.split)
            )
        yield dg.Output({**result.to_dict(), "version": champion.version}, metadata=metadata)
        if threshold is not None:
            yield metric_check(result, config.threshold)

    return model_evaluation


def champion_and_other(
    storage: StorageResource, new: ModelVersion
) -> tuple[ModelVersion, ModelVersion | None]:
    """The champion's version record, and the version to compare it with: the new one when
    it is not the champion, else the champion it replaced (None for the first)."""
    registry = ModelRegistry(storage.models_dir(), new.name)
    version = registry.champion_version()
    if version is None:
        raise dg.Failure(
            f"model {new.name} has no champion yet: the champion_gate check of "
            "model_checkpoint sets the first one",
            allow_retries=False,
        )
    champion = registry.version(version)
    moves = [m for m in registry.history() if m["version"] == version and m.get("previous")]
    other = new.version if new.version != version else (moves[-1]["previous"] if moves else None)
    try:
        return champion, None if other is None else registry.version(other)
    except UnknownModelError:  # a version registered before version.json existed
        return champion, None


def comparison_markdown(
    spec: PipelineSpec,
    champion_result: Any,
    champion: ModelVersion,
    other: ModelVersion,
    split: str,
) -> str:
    """The champion vs another version on `split`: primary metric and loss, with deltas."""
    from tinyexp_core.config.exceptions import TinyExpError

    name = spec.primary_metric.name
    try:
        other_result = evaluate_checkpoint(spec, other, split)
    except TinyExpError as err:
        return f"{other.version} could not be evaluated: {type(err).__name__}: {err}"
    rows = [
        (name, champion_result.value, other_result.value),
        ("loss", champion_result.loss, other_result.loss),
    ]
    lines = [
        f"| {split} | champion {champion.version} | {other.version} | champion - other |",
        "|---|---|---|---|",
    ]
    lines += [f"| {what} | {a:.4f} | {b:.4f} | {a - b:+.4f} |" for what, a, b in rows]
    return "\n".join(lines)


def _with_threshold(spec: PipelineSpec, threshold: float, bound: str) -> type[dg.Config]:
    import pydantic

    name = spec.primary_metric.name
    return pydantic.create_model(
        f"{spec.name}_EvaluationConfig",
        __base__=EvaluationConfig,
        threshold=(
            float,
            Field(
                default=threshold,
                description=f"the blocking minimum_metric check passes when {name} {bound} this",
            ),
        ),
    )


def evaluate_checkpoint(spec: PipelineSpec, version: ModelVersion, split: str) -> Any:
    """The experiment's EvalResult of a registered version's file on `split` (with the data
    of its `dataset_path`): kept beside the version after the first time
    (`tinyexp_dagster.eval_cache`)."""
    from tinyexp_dagster.eval_cache import cached_evaluation

    return cached_evaluation(version, split, lambda: _evaluate(spec, version, split))[0]


def _evaluate(spec: PipelineSpec, version: ModelVersion, split: str) -> Any:
    from tinyexp_core.contract import EvalResult
    from tinyexp_core.storage import to_uri
    from tinyexp_core.timing import mark

    path = version.dataset_path
    # As a URI under an object-store root: read from the bucket into this node's mirror.
    forced = {"data_cfg.prepared_path": to_uri(path)} if path else {}  # else its own data
    exp = build_experiment(version.experiment, list(version.overrides), forced)
    mark("evaluate_start")
    result = exp.evaluate(version.path, split)
    mark("evaluate_end")
    return result if isinstance(result, EvalResult) else EvalResult.from_dict(result)


def evaluation_metadata(result: Any, version: ModelVersion) -> dict[str, Any]:
    """Every scalar metric by name, loss, samples, the file, per-class table and confusion
    matrix (classification)."""
    metadata: dict[str, Any] = {
        "primary_metric": f"{result.primary_metric.name} ({result.primary_metric.direction})",
        **{name: value for name, value in result.to_dict()["metrics"].items() if value is not None},
        "loss": result.to_dict()["loss"],
        "num_samples": result.num_samples,
        "split": result.split,
        "checkpoint": dg.MetadataValue.path(version.path),
        "checkpoint_sha256": version.sha256,
    }
    if result.per_class:
        metadata["per_class"] = table(result.per_class)
    if result.confusion_matrix:
        matrix = confusion_markdown(result.confusion_matrix)
        metadata["confusion_matrix"] = dg.MetadataValue.md(matrix)
    return {k: v for k, v in metadata.items() if v is not None}


def metric_check(result: Any, threshold: float) -> dg.AssetCheckResult:
    """Whether the primary metric meets `threshold` in its direction (NaN never does)."""
    metric = result.primary_metric
    passed = metric.passes(result.value, threshold)
    bound = ">=" if metric.direction == "max" else "<="
    verdict = bound if passed else f"not {bound}"
    return dg.AssetCheckResult(
        check_name=MIN_METRIC_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={metric.name: result.to_dict()["value"], "threshold": threshold},
        description=f"{metric.name} {result.value:.4f} {verdict} threshold {threshold:.4f}",
    )


def confusion_markdown(matrix: list[list[int]]) -> str:
    """A confusion matrix as a markdown table (rows: true class, columns: predicted),
    right-aligned. Written by hand: importing pandas for it cost ~0.45 s per run."""
    header = ["true \\ pred", *(str(j) for j in range(len(matrix[0]) if matrix else 0))]
    rows = [header, *([str(i), *(str(n) for n in row)] for i, row in enumerate(matrix))]
    widths = [max(len(row[j]) for row in rows) for j in range(len(header))]
    lines = [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([lines[0], rule, *lines[1:]])
