"""A registered version's evaluation results, kept beside it:
`<storage_root>/models/<name>/<version>/evaluations/<split>-<key>.json`.

A version's weights never change (the registry never overwrites `model.pt`), so its
`evaluate()` on one split of one prepared dataset (a content-addressed directory), with the
same experiment, overrides and experiment source, gives the same result every time. Yet
each run scores the champion twice more than it needs to: the champion gate re-scores it
on the validation split (it was scored there as the newcomer of an earlier run), and
`model_evaluation` scores the champion it replaced on the test split again. Each score is
a model build and a forward pass over the split (~0.4 s for the MNIST example on the
digits, far more for a real model). The key holds the checkpoint's sha256, the dataset
directory, split, experiment import path and overrides, and the sha256 of the
experiment module's source file: editing `evaluate()` in that file scores again. Code it
calls in other modules is not in the key: delete `evaluations/` to re-score after such a
change. Versions on an object-store root (their path is a URI) are scored every time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

from tinyexp_core.config.exceptions import TinyExpError
from tinyexp_core.contract import EvalResult
from tinyexp_core.files import atomic_write_text
from tinyexp_core.registry import ModelVersion

__all__ = ["CACHE_DIR", "cached_evaluation", "seed"]

CACHE_DIR = "evaluations"  # in the version's directory
_VERSION_FILE = "version.json"  # the registry's record: only registered versions are cached


def cached_evaluation(
    version: ModelVersion, split: str, evaluate: Callable[[], EvalResult]
) -> tuple[EvalResult, bool]:
    """(`version`'s result on `split`, whether it came from the cache): read from the
    version's cache (after verifying the file against its sidecar, as loading it would),
    else `evaluate()` and kept there. A cache file that cannot be read is
    ignored (and replaced); one that cannot be written leaves the result as it is."""
    from tinyexp_core.checkpoint import verify_checkpoint

    path = cache_path(version, split)
    if path is not None:
        try:
            kept = EvalResult.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, KeyError, TinyExpError):
            kept = None  # none yet, or unreadable (not JSON, not an EvalResult): score again
        # The file is checked as the evaluation would check it: a damaged or replaced
        # version raises (CheckpointCorruptError...), it is never scored from the cache.
        if kept is not None and verify_checkpoint(version.path) == version.sha256:
            return kept, True
    result = evaluate()
    if path is not None:
        try:
            path.parent.mkdir(exist_ok=True)
            atomic_write_text(path, json.dumps(result.to_dict(), sort_keys=True))
        except OSError:
            pass  # a read-only or full disk: the next run scores again
    return result, False


def seed(version: ModelVersion, evaluations: dict[str, dict]) -> list[str]:
    """Keep the scores rank 0 computed as training ended (`TrainResult.evaluations`,
    tinyexp_core/training/after.py) as `version`'s cached results; returns the splits kept.
    Only a score of the same bytes (the registered file's sha256) on the same dataset
    directory is kept, and a result already cached is left as it is."""
    kept = []
    for split, entry in evaluations.items():
        path = cache_path(version, split)
        same_file = entry.get("sha256") == version.sha256
        if path is None or not same_file or not _same_dir(entry.get("dataset_path"), version):
            continue
        try:
            result = EvalResult.from_dict(entry["result"])
        except (KeyError, ValueError, TypeError, TinyExpError):
            continue
        result.checkpoint = version.path  # the same bytes, scored before they were copied
        if not path.exists():
            try:
                path.parent.mkdir(exist_ok=True)
                atomic_write_text(path, json.dumps(result.to_dict(), sort_keys=True))
            except OSError:
                continue  # a read-only or full disk: the step scores it
        kept.append(split)
    return kept


def _same_dir(scored_on: object, version: ModelVersion) -> bool:
    if not scored_on or not version.dataset_path:
        return False
    return Path(str(scored_on)).resolve() == Path(version.dataset_path).resolve()


def cache_path(version: ModelVersion, split: str) -> Path | None:
    """Where `version`'s result on `split` (with the data of its `dataset_path`) is kept;
    None when it is not cached (not a registered version on a local root, or the
    experiment's source cannot be read)."""
    model = version.path
    if not model or "://" in model or not version.sha256:
        return None
    version_dir = Path(model).parent
    source = _source_digest(version.experiment)
    if source is None or not (version_dir / _VERSION_FILE).is_file():
        return None
    key = {  # the same JSON as when versions were dicts: kept results stay found
        "sha256": version.sha256,
        "dataset_path": version.dataset_path,
        "split": split,
        "experiment": version.experiment,
        "overrides": list(version.overrides),
        "source": source,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return version_dir / CACHE_DIR / f"{split}-{digest[:20]}.json"


def _source_digest(experiment: str) -> str | None:
    """sha256 of the source file of the module named by `module:Class` or `module.Class`
    (found, not imported)."""
    module = experiment.partition(":")[0] if ":" in experiment else experiment.rpartition(".")[0]
    try:
        spec = importlib.util.find_spec(module) if module else None
        origin = spec.origin if spec is not None else None
        return hashlib.sha256(Path(origin).read_bytes()).hexdigest() if origin else None
    except (ImportError, ValueError, OSError):
        return None
