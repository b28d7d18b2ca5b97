"""`TinyExpPipeline`: a Dagster Component that declares one experiment's pipeline in YAML.

```yaml
# <project>/defs/<folder>/defs.yaml
type: tinyexp_dagster.TinyExpPipeline
attributes:
  name: tabular
  experiment: my_models.regressor:Exp
  overrides: ["train_cfg.num_epochs=5"]
  metric_threshold: 60.0        # rmse <= 60 (the experiment's primary metric and direction)
  retrain_cron: "0 3 * * *"
  retrain_timezone: Europe/Paris
  # optional: a sweep, one partition per trial (see docs/your-model.md)
  # sweep: {optimizer_cfg.lr: [0.001, 0.003], module_cfg.dropout: [0.1, 0.25]}
  # max_concurrent: 2
  # early_stopping: {warmup_epochs: 1}
```

Its definitions are `tinyexp_dagster.pipeline_defs(...)` with the same arguments. (No
`from __future__ import annotations` here: Dagster reads the field types to build the
YAML schema.)
"""

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from .schedules import DEFAULT_RETRAIN_CRON, DEFAULT_RETRAIN_TIMEZONE


@dataclass
class TinyExpPipeline(dg.Component, dg.Resolvable):
    """One TinyExp experiment as a pipeline: `<name>/prepared_dataset`, `<name>/trained_model`,
    `<name>/model_checkpoint`, `<name>/model_evaluation` (what the experiment implements),
    their checks, `<name>_*` jobs, retraining sensors and schedule."""

    name: str  # asset key prefix, group, and prefix of the jobs and triggers
    experiment: str  # the experiment class, `package.module:Class`
    overrides: list[str] = field(default_factory=list)  # applied before each run's config
    metric_threshold: float | None = None  # in the primary metric; None: no check, no sensor
    # the regression sensor's own threshold (retrain before the check fails); None: the above
    retrain_threshold: float | None = None
    retrain_cron: str = DEFAULT_RETRAIN_CRON  # `<name>_retrain_schedule` (created STOPPED)
    retrain_timezone: str = DEFAULT_RETRAIN_TIMEZONE  # an IANA name
    # how much worse (primary metric, validation split) a new version may be and still
    # become champion; >= 0
    champion_tolerance: float = 0.0
    # a grid {key: [values]} or {random: {params, num_trials, seed}}; None: no sweep
    sweep: dict[str, Any] | None = None
    max_concurrent: int | None = None  # a sweep's trainings at once; None: every trial
    early_stopping: dict[str, Any] | None = None  # {warmup_epochs: E}; None: off

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """`pipeline_defs(...)` with this component's attributes."""
        from .pipeline import pipeline_defs

        return pipeline_defs(
            self.name,
            self.experiment,
            self.overrides,
            metric_threshold=self.metric_threshold,
            retrain_threshold=self.retrain_threshold,
            retrain_cron=self.retrain_cron,
            retrain_timezone=self.retrain_timezone,
            champion_tolerance=self.champion_tolerance,
            sweep=self.sweep,
            max_concurrent=self.max_concurrent,
            early_stopping=self.early_stopping,
        )
