"""The pipeline: prepared_dataset -> trained_model -> model_checkpoint -> model_evaluation."""

from .checkpoint import model_checkpoint
from .checks import model_checkpoint_integrity, prepared_dataset_sanity
from .dataset import prepared_dataset
from .evaluation import model_evaluation
from .training import trained_model

ASSETS = [prepared_dataset, trained_model, model_checkpoint, model_evaluation]
ASSET_CHECKS = [prepared_dataset_sanity, model_checkpoint_integrity]

__all__ = [
    "ASSETS",
    "ASSET_CHECKS",
    "model_checkpoint",
    "model_checkpoint_integrity",
    "model_evaluation",
    "prepared_dataset",
    "prepared_dataset_sanity",
    "trained_model",
]
