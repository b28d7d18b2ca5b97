"""What the Ray resource (or the run's config) forces on a training run's experiment, as
typed values: workers, address and accelerator. The run's identity, paths and resume
decision are the run plan's (`assets/plan.py`). The keys are
`tinyexp_core.config.orchestration.ORCHESTRATED_KEYS` (`RunOverrides.build` refuses any other); the
values reach the experiment as they are, and the accelerator is one the experiment's own
accelerator config can take."""

from typing import Any

import dagster as dg

from tinyexp_dagster.assets.common import PipelineSpec, config_failure
from tinyexp_dagster.resources import RayDDPResource


def ray_forced(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    config: Any,
    ray: RayDDPResource,
    storage_root: str,
) -> dict[str, Any]:
    """Workers, resources, accelerator and timeout: this run's choices over the resource's;
    the Ray address, a warm local Ray's when one runs for the storage root. The accelerator
    keys are fitted to the experiment's own accelerator config (`_fit_accelerator`)."""
    address = ray.run_address(storage_root, log=context.log.info)
    decided = ray.forced(**config.orchestration(), address=address)
    accelerator = {k: decided.pop(k) for k in list(decided) if k.startswith("accelerator_cfg.")}
    decided.update(_fit_accelerator(context, spec, config, accelerator, decided["num_workers"]))
    return decided


def _fit_accelerator(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    config: Any,
    decided: dict[str, Any],
    num_workers: int,
) -> dict[str, Any]:
    """The accelerator keys the experiment's config can take, said in the step log. An
    experiment may bring its own AcceleratorCfg (TinyExp 0.0.1's has `accelerator: str`
    with cpu and ddp only) or none: a key it lacks or a value it cannot take is not sent."""
    import dataclasses

    from tinyexp_core.config.exceptions import ConfigError
    from tinyexp_core.config.orchestration import accelerator_choices, experiment_accelerator

    requested = decided["accelerator_cfg.accelerator"]
    defaults = spec.defaults if spec.defaults is not None else spec.exp_cls()
    cfg = getattr(defaults, "accelerator_cfg", None)
    if not dataclasses.is_dataclass(cfg):
        if requested != "auto":
            context.log.warning(
                f"{spec.experiment} has no accelerator_cfg: the accelerator setting "
                f"{requested!r} does not reach it"
            )
        return {}
    known = {f.name for f in dataclasses.fields(cfg)}
    fitted = {k: v for k, v in decided.items() if k.partition(".")[2] in known}
    if "accelerator_cfg.collective_timeout_s" not in fitted and config.collective_timeout_s:
        context.log.warning(
            f"{spec.experiment}'s accelerator_cfg has no collective_timeout_s: "
            f"collective_timeout_s={config.collective_timeout_s} does not reach it"
        )
    if "accelerator" not in known:
        return fitted
    try:
        chosen, why = experiment_accelerator(requested, accelerator_choices(cfg), num_workers)
    except ConfigError as err:
        raise config_failure(err) from None
    if chosen is None:  # the experiment's default stands: worth a look, not a failure
        context.log.warning(f"accelerator: {why}")
        del fitted["accelerator_cfg.accelerator"]
    else:
        context.log.info(f"accelerator: {why}")
        fitted["accelerator_cfg.accelerator"] = chosen
    return fitted
