"""Old import path of the model registry, now `tinyexp_core.registry` (re-exports, for
outside code)."""

from tinyexp_core.registry import ModelRegistry, ModelVersion, UnknownModelError, now_iso

__all__ = ["ModelRegistry", "ModelVersion", "UnknownModelError", "now_iso"]
