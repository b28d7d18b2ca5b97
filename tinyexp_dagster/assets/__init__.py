"""A pipeline's assets, built per experiment by factories (`build_*`):
`<name>/prepared_dataset -> <name>/trained_model -> <name>/model_checkpoint ->
<name>/model_evaluation`, and their checks. `tinyexp_dagster.pipeline_defs` assembles them."""

from tinyexp_dagster.assets.champion import CHAMPION_GATE_CHECK, build_champion_gate
from tinyexp_dagster.assets.checkpoint import build_model_checkpoint
from tinyexp_dagster.assets.checks import build_checkpoint_integrity, build_dataset_sanity
from tinyexp_dagster.assets.common import PipelineSpec
from tinyexp_dagster.assets.dataset import build_prepared_dataset
from tinyexp_dagster.assets.evaluation import MIN_METRIC_CHECK, build_model_evaluation
from tinyexp_dagster.assets.training import build_trained_model
from tinyexp_dagster.sweep import (
    LEADERBOARD,
    build_sweep_leaderboard,
    build_sweep_pool_sensor,
    pool_name,
)

__all__ = [
    "CHAMPION_GATE_CHECK",
    "build_champion_gate",
    "LEADERBOARD",
    "build_sweep_leaderboard",
    "build_sweep_pool_sensor",
    "pool_name",
    "MIN_METRIC_CHECK",
    "PipelineSpec",
    "build_checkpoint_integrity",
    "build_dataset_sanity",
    "build_model_checkpoint",
    "build_model_evaluation",
    "build_prepared_dataset",
    "build_trained_model",
]
