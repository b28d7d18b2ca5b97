"""The code location `bench.sweep_trial` runs its trials from: the MNIST example as a
swept pipeline (`sweep_trial`, one trial per learning rate, one at a time) with the
project's default resources, as a user's code location with a sweep declares it.

`BENCH_SWEEP_TRIAL_EPOCHS` and `BENCH_SWEEP_TRIAL_SAMPLES` (synthetic samples; 0 or unset:
the digits data) set the trials' size.
"""

from __future__ import annotations

import os

import dagster as dg

from bench.sweep_trial import ENV_EPOCHS, ENV_SAMPLES, LEARNING_RATES, NAME
from tinyexp_dagster import pipeline_defs
from tinyexp_dagster.resources.defaults import default_resources


def _overrides() -> list[str]:
    overrides = [f"train_cfg.num_epochs={int(os.environ.get(ENV_EPOCHS, '5'))}"]
    samples = int(os.environ.get(ENV_SAMPLES, "0"))
    if samples:
        overrides += ["data_cfg.source=synthetic", f"data_cfg.num_samples={samples}"]
    return overrides


defs = dg.Definitions.merge(
    pipeline_defs(
        NAME,
        "tinyexp_core.examples.mnist_exp:Exp",
        _overrides(),
        sweep={"optimizer_cfg.lr": list(LEARNING_RATES)},
        max_concurrent=1,
    ),
    dg.Definitions(resources=default_resources()),
)
