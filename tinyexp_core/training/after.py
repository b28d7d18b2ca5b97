"""Scores of the best checkpoint, computed by rank 0 right after `train()` returns.

A pipeline scores a new version twice after training: the champion gate on the validation
split, `model_evaluation` on the test split. Each score in the orchestrating process pays
for importing PyTorch and the experiment (seconds) before the forward pass; rank 0 has
both loaded when its training ends. So when asked (`TinyExp.evaluate_after_train`, set by
the Dagster training asset, not a config field: it changes no result and no config hash),
rank 0 runs `evaluate(best, split)` for each split and the scores ride back on the
`TrainResult` (`evaluations`), with the file's sha256 and the dataset they were computed
on. The registry's evaluation cache takes them (`tinyexp_dagster.eval_cache.seed`) only
for the same bytes and the same dataset, so a reader gets exactly what it would compute.
Rank 0 also loads the file as `checkpoint_integrity` would (weights_only=True) and records
its sha256 and epoch (`best_loaded`): the check then hashes the promoted copy and needs no
second load when the bytes are the same.

Best effort: an experiment without `evaluate()`, a checkpoint in object storage, or an
evaluation that raises leaves `evaluations` without that split (the error is logged); the
training result is never failed by it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loguru import logger

from tinyexp_core.checkpoint import load_checkpoint
from tinyexp_core.contract import EvalResult, TrainResult
from tinyexp_core.files import sha256_file
from tinyexp_core.timing import mark

__all__ = ["evaluate_after_training"]


def evaluate_after_training(exp: Any, result: Any) -> Any:
    """`result` with `evaluations` filled for `exp.evaluate_after_train`'s splits, on
    rank 0 only; any other value (a run()-only experiment's) is returned as it is."""
    splits = tuple(getattr(exp, "evaluate_after_train", ()) or ())
    if not splits or not isinstance(result, TrainResult) or os.environ.get("RANK", "0") != "0":
        return result
    best = result.checkpoints.best
    if not best or "://" in best or not Path(best).is_file():
        return result  # object storage: the registry does not cache its scores either
    sha = sha256_file(best)
    try:
        state = load_checkpoint(best, verify=False)  # hashed just above
        result.best_loaded = {"sha256": sha, "epoch": int(state["epoch"])}
        del state
    except Exception as err:  # noqa: BLE001 - the integrity check loads it and says why
        logger.warning(f"loading {best} after training failed ({err})")
    dataset = str(getattr(getattr(exp, "data_cfg", None), "prepared_path", "") or "")
    for split in splits:
        try:
            mark("evaluate_start")  # for the benchmarks (a no-op without a timing file)
            scored = exp.evaluate(best, split)
            mark("evaluate_end")
        except NotImplementedError:
            return result
        except Exception as err:  # noqa: BLE001 - best effort: the step scores it later
            logger.warning(f"scoring {best} on {split} after training failed ({err}); "
                           "the pipeline scores it in its own step")  # fmt: skip
            continue
        if not isinstance(scored, EvalResult):
            scored = EvalResult.from_dict(scored)
        entry = {"sha256": sha, "dataset_path": dataset, "result": scored.to_dict()}
        result.evaluations[split] = entry
    return result
