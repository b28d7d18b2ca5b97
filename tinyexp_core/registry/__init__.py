"""The model registry on the storage root (`<storage_root>/models/<name>/`). It owns a model's
registered versions (each a never-overwritten `model.pt` with its `version.json` record, read
and written as a `ModelVersion`), the `champion` alias that names the version in use, and the
alias's history (every move, who made it and why), with the lock that keeps two moves from
interleaving. It imports no Dagster, torch or ray: the console command reads it too, and the
Dagster assets (the checkpoint, the champion gate, the evaluation) write and move through it.
"""

from tinyexp_core.config.exceptions import UnknownModelError
from tinyexp_core.registry.store import ModelRegistry, now_iso
from tinyexp_core.registry.version import ModelVersion

__all__ = ["ModelRegistry", "ModelVersion", "UnknownModelError", "now_iso"]
