"""A sweep trial while it trains: the monitor that mirrors its per-epoch metric into the
sweep's board in Redis and asks for pruning (the decision is tinyexp_core.sweep's), the
trial's materialization metadata, and a pruned trial's result read from its checkpoints."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dagster as dg

from tinyexp_dagster.sweep.definitions import board_key, pool_name, sweep_scope

if TYPE_CHECKING:
    from tinyexp_dagster.assets.common import PipelineSpec

POLL_S = 0.5  # how often the monitor reads the run's progress events


class SweepMonitor:
    """While a trial trains: mirrors its epoch_end events into the sweep's board, and with
    early stopping asks the run's stop handle (`tinyexp_core.training.stop.StopHandle`, the one the
    launcher watches) for a checkpoint-then-stop when the trial falls below the median of
    the others. Best effort: a Redis error ends the monitoring (the trial trains on), it
    never fails the run."""

    def __init__(
        self, spec: PipelineSpec, trial: Any, url: str | None, run_id: str, key: str, stop: Any
    ):
        self.spec, self.trial, self.url, self.run_id, self.key = spec, trial, url, run_id, key
        self.stop = stop  # the run's StopHandle
        self.pruned_at: int | None = None  # 1-based epoch of the pruning decision
        self.last_epoch, self.last_value, self.best = 0, math.nan, math.nan
        self.error = ""
        self._stop = threading.Event()

    @contextlib.contextmanager
    def watching(self) -> Iterator[SweepMonitor]:
        """Monitor in a thread while the block runs."""
        if not self.url:
            yield self
            return
        from tinyexp_core.progress import EVENTS_STREAM, write_run_sweep
        from tinyexp_core.services.redis_client import make_client
        from tinyexp_core.sweep import SweepBoard

        client = make_client(self.url, socket_timeout_s=2.0)
        board = SweepBoard(client, self.key)
        metric = self.spec.primary_metric
        try:
            board.declare(self.spec.sweep, metric.name, metric.direction)
            board.update(self.trial.key, status="running", run_id=self.run_id, epoch=0)
            write_run_sweep(client, self.run_id, self.key)  # for the progress sensor
            last = client.xrevrange(EVENTS_STREAM, count=1)
            cursor = last[0][0] if last else "0-0"
        except Exception as err:  # best effort: the trial trains without the board
            self.error = f"{type(err).__name__}: {err}"
            client.close()
            yield self
            return
        self._cursor = cursor
        thread = threading.Thread(target=self._loop, args=(client, board), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=10)
            with contextlib.suppress(Exception):
                self._follow(client, board, self._cursor)  # the last epochs
            client.close()

    def finish(self, status: str, **fields: Any) -> None:
        """The trial's final row (finished, pruned, failed); best effort."""
        if not self.url:
            return
        from tinyexp_core.services.redis_client import make_client
        from tinyexp_core.sweep import SweepBoard

        with contextlib.suppress(Exception):
            client = make_client(self.url, socket_timeout_s=2.0)
            try:
                best = None if math.isnan(self.best) else self.best
                metric = None if math.isnan(self.last_value) else self.last_value
                row = {"status": status, "epoch": self.last_epoch, "metric": metric, "best": best}
                SweepBoard(client, self.key).update(self.trial.key, **{**row, **fields})
            finally:
                client.close()

    def _loop(self, client: Any, board: Any) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._cursor = self._follow(client, board, self._cursor)
            except Exception as err:  # best effort, see the class docstring
                self.error = f"{type(err).__name__}: {err}"
                return

    def _follow(self, client: Any, board: Any, cursor: str) -> str:
        from tinyexp_core.progress import parse_number, read_events

        for entry_id, event in read_events(client, cursor):
            cursor = entry_id
            if event.get("run_id") != self.run_id or event.get("event") != "epoch_end":
                continue
            name = self.spec.primary_metric.name
            value = parse_number(event.get(f"val_{name}", event.get(name)))
            self._epoch_done(board, int(event["epoch"]) + 1, math.nan if value is None else value)
        return cursor

    def _epoch_done(self, board: Any, epoch: int, value: float) -> None:
        from tinyexp_core.sweep import is_worse, should_prune

        metric = self.spec.primary_metric
        self.last_epoch, self.last_value = epoch, value
        if math.isnan(self.best) or is_worse(self.best, value, metric.direction):
            self.best = value
        board.record_epoch(self.trial.key, epoch, value)
        best = None if math.isnan(self.best) else self.best
        board.update(self.trial.key, status="running", epoch=epoch, metric=value, best=best)
        rule = self.spec.sweep.early_stopping
        if rule is None or self.pruned_at is not None:
            return
        others = board.others_at(self.trial.key, epoch)
        if should_prune(value, others, metric.direction, epoch, rule):
            self.pruned_at = epoch
            median = sorted(others)[len(others) // 2]
            self.stop.request(
                f"pruned: {metric.name} {value:.4g} at epoch {epoch} is worse than the "
                f"median of {len(others)} other trials (~{median:.4g})"
            )


def sweep_monitor(
    context: dg.AssetExecutionContext, spec: PipelineSpec, progress: Any, stop: Any
) -> SweepMonitor:
    """The run's sweep monitor (inactive without a sweep or a progress store); pruning asks
    `stop`, the run's StopHandle."""
    if spec.sweep is None:
        return SweepMonitor(spec, None, None, context.run.run_id, "", stop)
    pool, limit = pool_name(spec.name), spec.sweep.max_concurrent
    slots = context.instance.event_log_storage.get_concurrency_info(pool).slot_count
    if slots != limit:
        context.log.warning(
            f"concurrency pool {pool} has {slots} slots, not max_concurrent={limit}: "
            f"{spec.name}_sweep_pool_sensor sets it (or `dagster instance concurrency set "
            f"{pool} {limit}`)"
        )
    trial = spec.sweep.trial(context.partition_key)
    key = board_key(spec.name, sweep_scope(context))
    return SweepMonitor(spec, trial, progress.url, context.run.run_id, key, stop)


def trial_metadata(
    context: dg.AssetExecutionContext,
    spec: PipelineSpec,
    monitor: SweepMonitor,
    status: str,
    stop_checkpoint: str,
) -> dict[str, Any]:
    """What the leaderboard reads from a trial's materialization."""
    trial = spec.sweep.trial(context.partition_key)
    metadata: dict[str, Any] = {
        "sweep_status": status,
        "sweep_trial": trial.key,
        "sweep_overrides": dg.MetadataValue.json(trial.overrides),
    }
    if monitor.pruned_at is not None and status == "pruned":
        metadata["pruned_at_epoch"] = monitor.pruned_at
        metadata["stop_checkpoint"] = dg.MetadataValue.path(stop_checkpoint)
    if monitor.error:
        metadata["sweep_monitor_error"] = monitor.error
    return metadata


def pruned_output(
    spec: PipelineSpec, exp: Any, monitor: SweepMonitor, stopped: Any, started: float
) -> Any:
    """The TrainResult of a pruned trial, from its checkpoints: every epoch it finished,
    its best checkpoint, and the stop checkpoint (verified)."""
    import time

    from tinyexp_core.checkpoint import load_checkpoint, verify_checkpoint
    from tinyexp_core.contract import Checkpoints, EpochRecord, TrainResult

    run_dir = exp.get_run_dir()
    manager = exp.checkpoint_cfg.build_manager(run_dir)
    stop_checkpoint = stopped.checkpoint or str(manager.last_path)
    verify_checkpoint(stop_checkpoint)  # raises CheckpointCorruptError: then it is no clean stop
    state = load_checkpoint(stop_checkpoint)
    history = [EpochRecord.from_dict(r) for r in (state.get("extra") or {}).get("history", [])]
    return TrainResult(
        run_id=exp.run_id,
        run_dir=run_dir,
        checkpoints=Checkpoints(best=str(manager.best_path), last=stop_checkpoint),
        history=history,
        primary_metric=spec.primary_metric,
        wall_time_s=time.perf_counter() - started,
        world_size=exp.num_workers,
        config=exp.config_dict(),
    )
