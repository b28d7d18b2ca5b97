"""`tinyexp-dagster`: the pipeline's console command.

tinyexp-dagster summary [--pipeline NAME]  latest primary metric, champion, how to open the UI
tinyexp-dagster models [NAME]    every model and its champion; NAME: its versions (cli_models.py)
tinyexp-dagster promote NAME VERSION --reason TEXT   move the champion alias by hand
tinyexp-dagster compare A B [--plot PATH]   two runs: config diff, metric deltas, epochs
tinyexp-dagster sweep PIPELINE [list|run|leaderboard]   a sweep's trials (see cli_sweep.py)
tinyexp-dagster redis url|stop   the embedded Redis under the storage root
tinyexp-dagster ray up|down|status   a local Ray on 127.0.0.1 that outlives runs (warm starts)
tinyexp-dagster progress [RUN_ID] live training progress from Redis (`--once`: one snapshot)
tinyexp-dagster resume RUN_ID    run again what a terminated or failed run left, from its checkpoint

Commands about a pipeline find the project's code location as `dagster dev` does (`-m`,
`-f`, `-w`, else pyproject.toml / workspace.yaml in the working directory; cli_location.py).
The progress view reads `TINYEXP_REDIS_URL`, else the embedded Redis of `--storage-root`.
Exit status of `progress`: 0 done (the run succeeded, or no run is active any more),
1 the run failed, was cancelled or is unknown, 3 no progress store or Redis unreachable.
Exit status of `resume`: 0 the resume run succeeded, 1 it failed, 2 RUN_ID cannot be resumed
(unknown, still in progress, succeeded, or no valid checkpoint in its run directory).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from tinyexp_dagster.cli_compare import add_compare_command
from tinyexp_dagster.cli_models import add_model_commands
from tinyexp_dagster.cli_summary import add_summary_command
from tinyexp_dagster.cli_sweep import add_sweep_command
from tinyexp_dagster.resources.storage import default_storage_root

if TYPE_CHECKING:
    from tinyexp_core.progress import RunProgress

EXIT_RUN_FAILED = 1
EXIT_NO_STORE = 3
ENV_REDIS_URL = "TINYEXP_REDIS_URL"
_BAR_WIDTH = 24
_STALE_HEARTBEAT_S = 10.0  # show the heartbeat's age from this age on


def cmd_resume(args: argparse.Namespace) -> int:
    """Launch the run that continues RUN_ID from its last valid checkpoint; wait for it."""
    import dagster as dg

    from tinyexp_dagster.resume import ResumeRefused, execute_resume, plan_resume

    instance = dg.DagsterInstance.get()
    try:
        plan = plan_resume(instance, args.run_id, args.storage_root)
        print(
            f"resuming run {args.run_id} ({plan.run.job_name}, {plan.run.status.value}) "
            f"from {plan.checkpoint}",
            flush=True,
        )
        result = execute_resume(instance, plan)
    except ResumeRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    status = instance.get_run_by_id(result.run_id).status.value
    print(f"run {result.run_id} {status} (resumed from run {args.run_id})")
    return 0 if result.success else EXIT_RUN_FAILED


def cmd_redis(args: argparse.Namespace) -> int:
    """Show or stop the embedded Redis that serves this storage root."""
    from tinyexp_core.services.embedded_redis import EmbeddedRedis
    from tinyexp_core.services.redis_client import redact_url

    server = EmbeddedRedis(args.storage_root)
    if args.action == "url":
        url = server.url()
        if url is None:
            print("no embedded Redis running for this storage root")
            return 1
        # The password stays in its 0600 file: a terminal or a CI log is not the place for it.
        print(f"{redact_url(url)}  (password in {server.password_file})")
        return 0
    stopped = server.stop()
    print("stopped the embedded Redis" if stopped else "no embedded Redis was running")
    return 0


def cmd_ray(args: argparse.Namespace) -> int:
    """Start, stop or show the local Ray that runs on this storage root reuse."""
    from tinyexp_core.config.exceptions import RayConnectionError
    from tinyexp_core.services.ray_head import (
        address_file,
        live_head_address,
        read_head,
        start_head,
        stop_head,
    )

    root = args.storage_root
    if args.action == "up":
        if args.warm_ranks is not None and args.warm_ranks < 0:
            print(f"error: --warm-ranks {args.warm_ranks}: expected an integer >= 0",
                  file=sys.stderr)  # fmt: skip
            return 2
        try:
            head, started = start_head(root, num_cpus=args.num_cpus, warm_ranks=args.warm_ranks)
        except RayConnectionError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        what = "started" if started else "already running:"
        print(f"{what} local Ray at {head.address} (pid {head.pid}), recorded in "
              f"{address_file(root)}; runs on this storage root reuse it until "
              "`tinyexp-dagster ray down`")  # fmt: skip
        return 0
    if args.action == "down":
        head = stop_head(root)
        print("no local Ray was recorded" if head is None else f"stopped the local Ray at "
              f"{head.address} (pid {head.pid})")  # fmt: skip
        return 0
    address, why = live_head_address(root)
    if address:
        print(f"local Ray at {address} (pid {read_head(root).pid}): runs reuse it; "
              f"{_warm_ranks_text(address)}")  # fmt: skip
        return 0
    print(why or f"no local Ray recorded in {address_file(root)}: runs start their own")
    return 1


def _warm_ranks_text(address: str) -> str:
    """What the running Ray's warm-rank pool holds (connects to that Ray: ~1-2 s)."""
    import ray

    from tinyexp_core.launchers.ray_session import ray_session
    from tinyexp_core.services import ray_pool

    if ray.is_initialized() and ray.get_runtime_context().gcs_address != address:
        return "warm ranks not checked (this process is connected to another Ray)"
    try:
        with ray_session(address):
            pool = ray_pool.find_pool()
            if pool is None:
                return "no warm ranks"
            s = ray_pool.pool_status(pool)
    except Exception as err:  # status must answer even when the Ray misbehaves
        return f"warm ranks unknown ({type(err).__name__}: {err})"
    return (f"warm ranks: {s['ready']} ready, {s['starting']} starting, {s['lent']} in use "
            f"(keeps {s['size']})")  # fmt: skip


def cmd_progress(args: argparse.Namespace) -> int:
    """Show live progress of one run (or of every active run) until it ends."""
    import redis

    from tinyexp_core.config.exceptions import InvalidRedisUrlError
    from tinyexp_core.services.embedded_redis import find_redis_url
    from tinyexp_core.services.redis_client import classify_redis_error, make_client, redact_url

    try:
        configured = os.environ.get(ENV_REDIS_URL)
        url, why = find_redis_url(configured, args.storage_root, url_name=ENV_REDIS_URL)
    except InvalidRedisUrlError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if url is None:
        print(why, file=sys.stderr)
        return EXIT_NO_STORE
    shown = redact_url(url)
    client = make_client(url, socket_timeout_s=1.0, connect_timeout_s=1.0)
    view = ProgressView(sys.stdout)
    try:
        return _watch(client, args.run_id, view, once=args.once, interval_s=args.interval)
    except (redis.RedisError, OSError) as err:
        kind = classify_redis_error(err)
        if kind == "auth":
            print(f"error: Redis at {shown} rejected the credentials: {err}", file=sys.stderr)
            return 2
        if kind == "unreachable":
            print(f"Redis unreachable at {shown}: {type(err).__name__}: {err}", file=sys.stderr)
            return EXIT_NO_STORE
        raise
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def _watch(
    client: Any, run_id: str | None, view: ProgressView, *, once: bool, interval_s: float
) -> int:
    """Redraw every `interval_s` until the run (or every active run) has ended."""
    from tinyexp_core.progress import active_run_ids, read_progress

    shown: list[str] = []  # runs on screen, in order of appearance
    while True:
        wanted = [run_id] if run_id else active_run_ids(client)
        shown += [rid for rid in wanted if rid not in shown]
        runs = {rid: read_progress(client, rid) for rid in shown}
        if run_id and not runs[run_id].exists:
            view.draw([f"no progress for run {run_id} (not started yet, or expired)"])
            return EXIT_RUN_FAILED
        now = time.time()
        view.draw([render_run(runs[rid], now) for rid in shown] or ["no active runs"])
        if run_id and runs[run_id].finished:
            return 0 if runs[run_id].status == "succeeded" else EXIT_RUN_FAILED
        if once or (not run_id and not wanted):
            return 0
        time.sleep(interval_s)


def render_run(run: RunProgress, now: float) -> str:
    """One line: status, bar, epoch, step, loss, ETA (and a stale heartbeat's age)."""
    status = run.status or "?"
    fraction = 1.0 if status == "succeeded" else _fraction(run)
    filled = round(fraction * _BAR_WIDTH)
    parts = [run.run_id, f"{status:<9}", f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}]"]
    parts.append(f"{100 * fraction:3.0f}%")
    if run.epoch is not None:
        parts.append(f"epoch {run.epoch + 1}/{_text(run.num_epochs)}")
    if run.step is not None:
        parts.append(f"step {run.step + 1}/{_text(run.num_steps)}")
    if run.loss is not None:
        parts.append(f"loss {run.loss:.4f}")
    if run.eta_s is not None and status in ("running", "stalled"):
        parts.append(f"ETA {_duration(run.eta_s)}")
    if run.heartbeat is not None and not run.finished:
        if now - run.heartbeat >= _STALE_HEARTBEAT_S:
            parts.append(f"(last heartbeat {_duration(now - run.heartbeat)} ago)")
    if run.error:
        parts.append(f"error: {run.error.strip().splitlines()[-1][:120]}")
    return "  ".join(parts)


def _text(value: int | None) -> str:
    return "?" if value is None else str(value)


def _fraction(run: RunProgress) -> float:
    """Done steps over all steps (`epoch`, `step`: 0-based; `num_steps`: per epoch)."""
    if run.epoch is None or not run.num_epochs:
        return 0.0
    if run.step is None or not run.num_steps:
        return min(1.0, run.epoch / run.num_epochs)
    done = run.epoch * run.num_steps + run.step + 1
    return min(1.0, max(0.0, done / (run.num_epochs * run.num_steps)))


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressView:
    """Draws frames of lines: redrawn in place on a terminal, printed on change otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._lines: list[str] = []

    def draw(self, lines: list[str]) -> None:
        if self.tty:
            width = shutil.get_terminal_size().columns
            lines = [line[: width - 1] for line in lines]  # a wrapped line breaks the redraw
            if self._lines:
                self.out.write(f"\x1b[{len(self._lines)}F\x1b[J")
        elif lines == self._lines:
            return
        self.out.write("".join(f"{line}\n" for line in lines))
        self.out.flush()
        self._lines = lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyexp-dagster", description=__doc__.splitlines()[0])
    parser.add_argument("--storage-root", default=default_storage_root())
    sub = parser.add_subparsers(dest="command", required=True)
    add_summary_command(sub)
    redis = sub.add_parser("redis", help="the embedded Redis server")
    redis.add_argument("action", choices=("url", "stop"))
    redis.set_defaults(func=cmd_redis)
    ray = sub.add_parser("ray", help="a local Ray that outlives runs (warm starts)")
    ray.add_argument("action", choices=("up", "down", "status"))
    ray.add_argument("--num-cpus", type=int, default=None, help="CPUs it offers (up; default: all)")
    ray.add_argument(
        "--warm-ranks",
        type=int,
        default=None,
        help="rank processes kept started with torch imported, for runs to take (up; "
        "default: one per CPU, at most 4; 0: none)",
    )
    ray.set_defaults(func=cmd_ray)
    progress = sub.add_parser("progress", help="live training progress from Redis")
    progress.add_argument("run_id", nargs="?", help="a run id (default: every active run)")
    progress.add_argument("--once", action="store_true", help="print one snapshot and exit")
    progress.add_argument("--interval", type=_positive_float, default=1.0, help="refresh, s")
    progress.set_defaults(func=cmd_progress)
    resume = sub.add_parser(
        "resume", help="continue a terminated or failed run from its last checkpoint"
    )
    resume.add_argument("run_id", help="the Dagster run id to continue")
    resume.set_defaults(func=cmd_resume)
    add_model_commands(sub)
    add_compare_command(sub)
    add_sweep_command(sub)
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
