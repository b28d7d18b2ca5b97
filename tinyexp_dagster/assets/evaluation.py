"""`model_evaluation`: the promoted checkpoint, loaded from its file, on the test split."""

from typing import Any, Literal

import dagster as dg
from pydantic import Field

from .common import GROUP, build_experiment, table

MIN_ACCURACY_CHECK = "minimum_accuracy"


class EvaluationConfig(dg.Config):
    """Which split to score, and the accuracy below which the model is not good."""

    split: Literal["train", "val", "test"] = Field(
        default="test", description="the prepared dataset's split to score"
    )
    min_accuracy: float = Field(
        default=0.9,
        description="accuracy below which the blocking minimum_accuracy check fails",
    )


def confusion_markdown(matrix: list[list[int]]) -> str:
    """A confusion matrix as a markdown table (rows: true class, columns: predicted)."""
    import pandas as pd

    frame = pd.DataFrame(matrix)
    frame.index.name = "true \\ pred"
    return frame.to_markdown()


@dg.asset(
    group_name=GROUP,
    code_version="1",
    kinds={"pytorch"},
    check_specs=[
        dg.AssetCheckSpec(
            MIN_ACCURACY_CHECK,
            asset="model_evaluation",
            blocking=True,
            description="Accuracy on the test split is at least `min_accuracy`.",
        )
    ],
)
def model_evaluation(
    context: dg.AssetExecutionContext, config: EvaluationConfig, model_checkpoint: dict[str, Any]
):
    """Accuracy, loss, per-class precision/recall and confusion matrix of the promoted model."""
    exp = build_experiment(
        model_checkpoint["experiment"],
        model_checkpoint["overrides"],
        [f"data_cfg.prepared_path={model_checkpoint['dataset_path']}"],
    )
    from tinyexp_core.timing import mark

    mark("evaluate_start")
    report = exp.evaluate(model_checkpoint["path"], config.split)
    mark("evaluate_end")
    context.log.info(
        f"{config.split} accuracy {report['accuracy']:.4f} of {model_checkpoint['path']}"
    )
    value = {
        "accuracy": report["accuracy"],
        "loss": report["loss"],
        "split": config.split,
        "checkpoint": model_checkpoint["path"],
        "sha256": model_checkpoint["sha256"],
        "num_samples": report["num_samples"],
    }
    yield dg.Output(
        value,
        metadata={
            "accuracy": report["accuracy"],
            "loss": report["loss"],
            "num_samples": report["num_samples"],
            "split": config.split,
            "checkpoint": dg.MetadataValue.path(model_checkpoint["path"]),
            "checkpoint_sha256": model_checkpoint["sha256"],
            "per_class": table(report["per_class"]),
            "confusion_matrix": dg.MetadataValue.md(confusion_markdown(report["confusion_matrix"])),
            "min_accuracy": config.min_accuracy,
        },
    )
    passed = report["accuracy"] >= config.min_accuracy
    yield dg.AssetCheckResult(
        check_name=MIN_ACCURACY_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"accuracy": report["accuracy"], "min_accuracy": config.min_accuracy},
        description=(
            f"accuracy {report['accuracy']:.4f} "
            f"{'>=' if passed else '<'} minimum {config.min_accuracy:.4f}"
        ),
    )
