"""tinyexp_dagster: TinyExp experiments as Dagster assets, trained with DDP on Ray.

Public API: `pipeline_defs(name, experiment, ...)` (one pipeline per experiment),
`TinyExpPipeline` (the same as a Dagster Component, for `defs.yaml`) and
`default_resources()` (the resources every pipeline of a code location shares):

    defs = dg.Definitions.merge(
        pipeline_defs("mnist", "tinyexp_core.examples.mnist_exp:Exp", metric_threshold=0.9),
        pipeline_defs("tabular", "tinyexp_core.examples.tabular_exp:Exp"),
        dg.Definitions(resources=default_resources()),
    )

Importing this package is cheap: the names above load on first use, and torch and ray are
imported only inside asset bodies and resource methods, so `dagster` loads definitions fast.
`dir()` lists them too: Dagster's `dg` finds `TinyExpPipeline` by listing this module (the
package's `dagster_dg_cli.registry_modules` entry point names it).
"""

from __future__ import annotations

import importlib
from typing import Any

from tinyexp_dagster import quick_exit
from tinyexp_dagster.dagster_warnings import quiet_output_data_version

__version__ = "0.1.0"

_EXPORTS = {
    "pipeline_defs": "pipeline",
    "TinyExpPipeline": "component",
    "default_resources": "resources.defaults",
}

__all__ = ["TinyExpPipeline", "default_resources", "pipeline_defs"]


quiet_output_data_version()  # Dagster's beta warning for what the assets do on purpose
quick_exit.install()  # no last garbage collection of the whole heap at exit (see there)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
