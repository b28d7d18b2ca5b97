"""The training runtime: the session a `train()` loop calls into, and what it owns.

`TrainingSession` (enter it in `train()`, on every rank) gives a loop the accelerator, run
directory, logger, resume (epoch and mid-epoch), epoch and step checkpoints, agreed stops,
progress in Redis, W&B tracking, the history and the `TrainResult`. `RunContext` is what an
orchestrator told the run about itself (asset, attempt, progress key).

The package also owns what the session is built from: `step_checkpoint` (data position,
every rank's RNG, the background writer), `stop` (stop requests and the ranks' agreement on
a step), `recipe` (resume resolution and restore, `StepCheckpoints`, `reporting`),
`tracking` (one W&B run per training run), `ema` and `metrics` (a loop's helpers).
"""

from tinyexp_core.training.context import RunContext
from tinyexp_core.training.session import TrainingSession

__all__ = ["RunContext", "TrainingSession"]
