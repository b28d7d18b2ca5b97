"""The training asset's outcome policy: what each way a training can end becomes in Dagster.

- finished: rank 0's result (a sweep trial's row says `finished`);
- pruned (the sweep's early stopping asked the run's stop handle): the trial's result read
  from its checkpoints, its row `pruned`; the asset materializes;
- stopped: a terminal signal (Ctrl-C / SIGTERM on `dagster job execute`, `dagster asset
  materialize`, `tinyexp-dagster resume`) or Dagster's terminate (the UI, the instance, the
  stall sensor): every rank checkpointed at an agreed step. Never a retry, never a success:
  the step fails without retries and the run ends CANCELED; after a terminal signal the
  process exits 130 / 143 and its last line names the command that continues the run;
- interrupted (a second Ctrl-C, Dagster's interrupt outside the ranks): a stop without the
  checkpoint wait; the ranks are gone;
- failed: retried under the asset's RetryPolicy when another attempt can help (a worker
  died), else a failure naming what was wrong.

Stop requests reach the launcher through an explicit `StopHandle` made for the run, never
through a process-wide flag: the terminal's signals (`signals_stop`), the sweep monitor.
"""

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg

from tinyexp_dagster.assets.common import PipelineSpec, config_failure
from tinyexp_dagster.assets.plan import TrainPlan
from tinyexp_dagster.sweep import SweepMonitor, pruned_output, sweep_monitor, trial_metadata
from tinyexp_dagster.terminal_stop import exit_after_run, resume_command


def train_on_ray(
    context: dg.AssetExecutionContext, spec: PipelineSpec, plan: TrainPlan, ray: Any
) -> tuple[Any, dict[str, Any]]:
    """Run the plan's experiment on the Ray ranks and apply the policy above; returns
    (rank 0's result, the sweep trial's metadata or {})."""
    from tinyexp_core.config.exceptions import RunStoppedError
    from tinyexp_core.timing import mark
    from tinyexp_core.training.stop import StopHandle, signals_stop

    stop = StopHandle()
    monitor = sweep_monitor(context, spec, plan.progress, stop)
    mark("launch_start")  # for the benchmarks (a no-op without a timing file)
    started = time.perf_counter()
    with signals_stop(stop, say=context.log.warning):
        try:
            with plan.progress.kept_in_use(), monitor.watching():
                summary = ray.run(plan.exp, plan.launch, log=context.log.info, stop=stop)[0]
            mark("launch_end")
        except RunStoppedError as err:
            if monitor.pruned_at is None:
                raise _stopped(context, plan, monitor, stop, err) from None
            context.log.warning(f"trial {context.partition_key} pruned: {err}")
            summary = pruned_output(spec, plan.exp, monitor, err, started)
            monitor.finish("pruned", pruned_at_epoch=monitor.pruned_at)
            return summary, trial_metadata(context, spec, monitor, "pruned", err.checkpoint)
        except Exception as err:
            failure = _failed(plan, monitor, err)
            if failure is err:
                raise
            raise failure from None
        except BaseException as err:  # Dagster's termination, a second Ctrl-C
            raise _stopped(context, plan, monitor, stop, err) from None
    if stop.requested and monitor.pruned_at is None:
        # Asked to stop (a signal, Dagster's terminate) after the ranks' last agreed check:
        # training finished, but the run was stopped, and it must not become a success.
        late = RunStoppedError("", -1, f"{stop.reason} after the last step")
        raise _stopped(context, plan, monitor, stop, late, finished=True) from None
    if spec.sweep is None:
        return summary, {}
    monitor.finish("finished")
    return summary, trial_metadata(context, spec, monitor, "finished", "")


def _stopped(
    context: dg.AssetExecutionContext,
    plan: TrainPlan,
    monitor: SweepMonitor,
    stop: Any,
    err: BaseException,
    *,
    finished: bool = False,
) -> dg.Failure:
    """The step's failure for a stopped run (no retry: a retry would train again in a run
    someone stopped). A run stopped on its handle (a terminal signal, a hook's request) is
    made CANCELING here, a terminated one Dagster made so: Dagster ends both CANCELED; an
    interrupt nobody asked for (no request, no terminate) ends it FAILURE. `finished`: the
    ranks had finished (and reported `succeeded`) before they could stop."""
    checkpoint = getattr(err, "checkpoint", "")
    # A verdict written before the stop (the stall sensor's `failed`) stands; the ranks'
    # own `succeeded` does not: the run was stopped.
    why = str(err) or type(err).__name__
    plan.progress.mark("cancelled", why, only_if_active=not finished)
    monitor.finish("failed", error="stopped")
    command = resume_command(context.run.run_id, plan.storage_root)
    if _termination_requested(context):
        how = "the run was terminated"
    elif stop.requested:
        terminal = stop.signum is not None
        how = f"stopped {'from the terminal ' if terminal else ''}({stop.reason})"
        context.instance.report_run_canceling(context.run, message=f"training {how}")
        if terminal:
            exit_after_run(stop.signum, command)
    else:
        how = f"interrupted ({type(err).__name__})"
    message = f"training {how}: {_what_stopped(err, finished)}; continue with: {command}"
    context.log.warning(message)
    metadata = {"checkpoint": checkpoint, "step": getattr(err, "step", -1), "resume": command}
    return dg.Failure(message, metadata=metadata, allow_retries=False)


def _what_stopped(err: BaseException, finished: bool) -> str:
    from tinyexp_core.config.exceptions import RunStoppedError

    if finished:
        return "training had finished before the ranks could stop; its checkpoints stand"
    if isinstance(err, RunStoppedError) and err.checkpoint:
        return f"every rank checkpointed ({err.checkpoint}, step {err.step})"
    return f"the Ray workers were removed ({err or type(err).__name__})"


@contextlib.contextmanager
def cancelled_if_terminated(
    context: dg.AssetExecutionContext, redis: Any, storage: Any
) -> Iterator[None]:
    """Around a step after training (promotion, evaluation): when Dagster interrupts it (a
    terminate), the run's progress says `cancelled`, not the `succeeded` its training
    reported: the run ends CANCELED, and its progress must say so too."""
    try:
        yield
    except Exception:
        raise
    except BaseException as err:  # Dagster's termination
        with contextlib.suppress(Exception):  # best effort: the run's outcome is Dagster's
            root = str(storage.resolved_root())
            progress = redis.for_run(root, context.run.run_id)
            where = context.asset_key.to_user_string()
            progress.mark("cancelled", f"terminated during {where} ({type(err).__name__})")
        raise


def _failed(plan: TrainPlan, monitor: SweepMonitor, err: Exception) -> Exception:
    """The error a failed training raises: itself (retried by the RetryPolicy) when another
    attempt can help, else a failure without retries naming what was wrong."""
    from tinyexp_core.config.exceptions import WorkerFailedError, is_retryable

    monitor.finish("failed", error=type(err).__name__)
    by_rank = isinstance(err, WorkerFailedError)  # else no rank ever ran: nothing to mark
    if by_rank:
        plan.progress.mark("failed", str(err))
    if not is_retryable(err):  # every attempt would meet it again
        return config_failure(
            err, "rejected by the workers" if by_rank else "invalid configuration"
        )
    return err


def _termination_requested(context: dg.AssetExecutionContext) -> bool:
    """Whether someone asked Dagster to terminate this run (UI, GraphQL, the instance), or
    terminated it and marked it failed (the stall sensor, after a second hang at one step)."""
    run = context.instance.get_run_by_id(context.run.run_id)
    return run is not None and run.status in (
        dg.DagsterRunStatus.CANCELING,
        dg.DagsterRunStatus.CANCELED,
        dg.DagsterRunStatus.FAILURE,
    )
