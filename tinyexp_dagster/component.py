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

Its definitions are `tinyexp_dagster.pipeline_defs(...)` with the same arguments; any number
of folders (and `pipeline_defs` calls) merge into one code location. `dg` finds the type
through the package's `dagster_dg_cli.registry_modules` entry point (`dg list components`),
and `dg scaffold defs tinyexp_dagster.TinyExpPipeline <folder> [--experiment pkg.mod:Exp]`
writes a `defs.yaml` that loads (the pipeline is named after the folder). (No
`from __future__ import annotations` here: Dagster reads the field types to build the
YAML schema.)
"""

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel

from tinyexp_dagster.schedules import DEFAULT_RETRAIN_CRON, DEFAULT_RETRAIN_TIMEZONE

# What a scaffolded defs.yaml trains until it names the team's own experiment.
SCAFFOLD_EXPERIMENT = "tinyexp_core.examples.tabular_exp:Exp"


class TinyExpPipelineScaffoldParams(BaseModel):
    """`dg scaffold defs tinyexp_dagster.TinyExpPipeline <folder>` options."""

    name: str | None = None  # the pipeline's name; None: the folder's
    experiment: str = SCAFFOLD_EXPERIMENT  # the experiment class, `package.module:Class`


class TinyExpPipelineScaffolder(dg.Scaffolder[TinyExpPipelineScaffoldParams]):
    """Writes `<folder>/defs.yaml`: the pipeline's name, experiment and the optional keys
    as comments."""

    @classmethod
    def get_scaffold_params(cls) -> type[TinyExpPipelineScaffoldParams]:
        return TinyExpPipelineScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[TinyExpPipelineScaffoldParams]) -> None:
        from tinyexp_core.config.exceptions import ConfigValueError
        from tinyexp_dagster.pipeline import valid_name

        name = request.params.name or request.target_path.name
        if not valid_name(name):
            allowed = "letters, digits and _, starting with a letter (pass --name)"
            raise ConfigValueError("name", name, allowed)
        if request.scaffold_format != "yaml":
            from dagster.components.component_scaffolding import scaffold_component

            attributes = {"name": name, "experiment": request.params.experiment}
            scaffold_component(request, attributes)
            return
        text = _SCAFFOLD.format(type=request.type_name, name=name, exp=request.params.experiment)
        (request.target_path / "defs.yaml").write_text(text)


_SCAFFOLD = """\
type: {type}
attributes:
  name: {name}  # asset key prefix, group, and prefix of the jobs and triggers
  experiment: {exp}  # your TinyExp subclass, package.module:Class
  overrides: []  # key=value, applied before each run's config
  # metric_threshold: 0.9  # in the primary metric's units and direction; a blocking check
  # retrain_cron: "0 2 * * *"
  # retrain_timezone: UTC
  # champion_tolerance: 0.0
  # sweep: {{optimizer_cfg.lr: [0.001, 0.003]}}  # one partition per trial
"""


@dg.scaffold_with(TinyExpPipelineScaffolder)
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
        """`pipeline_defs(...)` with this component's attributes, declared by its file."""
        from tinyexp_dagster.declarations import declared_in
        from tinyexp_dagster.pipeline import pipeline_defs

        where = _declaring_file(context)
        with declared_in(where) if where else contextlib.nullcontext():
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


def _declaring_file(context: dg.ComponentLoadContext | None) -> str | None:
    """The component's `defs.yaml` (its folder when declared in Python); None without a
    load context (a component built by hand)."""
    if context is None:
        return None
    folder = Path(context.path)
    yaml_file = folder / "defs.yaml"
    return str(yaml_file if yaml_file.is_file() else folder)
