"""What Redis progress reporting adds to the MNIST example's step time (issue 4, must-show 4).

One process, one run, fixed torch threads. The MNIST example's loop body (its model,
optimizer and batches, default digits data, batch 32) runs through a `TrainingSession`
(`session.batches`, `session.step`: where progress is reported) over short slices of steps,
in rounds of three slices: reporting off, on (`RedisProgressReporter` against a local
redis-server), and off again as an A/A control; the order rotates every round so drift
hits every side alike. Two scenarios, each against "off", so the ratio isolates the reporter:

- production: `throttle_s=2` (the default): Redis is written at most every 2 s; one
  reporter lives through all rounds, like one long run;
- stress: `throttle_s=0`: a Redis round trip on every step.

Reported per scenario (a pair is a round): the on/off step-time ratio with its 95%
interval and the A/A control (off-again / off), saved with the raw step times and the time
spent inside `reporter.step`, measured directly. Target: production reporting adds at most
1% to the step time (on/off <= 1.01, the whole interval below it to be `met`).

    .venv/bin/python -m bench.progress_overhead [--rounds 20] [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.results import Run, add_results_arg
from bench.stats import compare

TARGET_RATIO = 1.01
SCENARIOS = {"production": 2.0, "stress": 0.0}  # name: throttle_s
ORDERS = (("off", "on", "control"), ("on", "control", "off"), ("control", "off", "on"))


class TimedReporter:
    """Forwards `wants_step` and `step` to a reporter and adds up the time spent in them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # heartbeat, epoch_end, ...: not timed

    def wants_step(self) -> bool:
        start = time.perf_counter()
        wanted = self.inner.wants_step()
        self.seconds += time.perf_counter() - start
        return wanted

    def step(self, **kwargs: Any) -> None:
        start = time.perf_counter()
        self.inner.step(**kwargs)
        self.seconds += time.perf_counter() - start


class StepSlice:
    """The next `num_steps` batches of a loader, moving on to its next epoch when it runs
    out: lets the example's epoch loop run over short, interleavable slices."""

    def __init__(self, loader: Any, num_steps: int) -> None:
        self.loader = loader
        self.num_steps = num_steps
        self._epoch = 0
        self._batches: Iterator[Any] = iter(())

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Ignored: the underlying loader's epochs advance as it runs out (the benchmark
        never resumes mid-epoch, so `start_step` is always 0)."""

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self) -> Iterator[Any]:
        for _ in range(self.num_steps):
            batch = next(self._batches, None)
            if batch is None:
                self._epoch += 1
                self.loader.set_epoch(self._epoch)
                self._batches = iter(self.loader)
                batch = next(self._batches)
            yield batch


def _sides() -> dict[str, list[float]]:
    return {"off": [], "on": [], "control": []}


@dataclass
class Samples:
    """Per-step wall times of one scenario by side, one per round."""

    wall: dict[str, list[float]] = field(default_factory=_sides)
    reporter_s: float = 0.0
    steps_on: int = 0
    writes: int = 0
    errors: int = 0

    def comparison(self, name: str, target: float | None) -> dict[str, Any]:
        """Step time on / off per round, with off-again / off as the A/A control."""
        return compare(
            f"5. step time, progress on / off ({name})",
            self.wall["on"],
            self.wall["off"],
            target=target,
            direction="lower",
            control=(self.wall["control"], self.wall["off"]),
            what="per-round step time with the reporter on over off",
        )

    def raw(self) -> dict[str, Any]:
        """The per-round step seconds of every side and the reporter's own time."""
        return {
            "step_s": self.wall,
            "reporter_s": self.reporter_s,
            "steps_on": self.steps_on,
            "reporter_share_of_step": self.reporter_s
            / self.steps_on
            / statistics.median(self.wall["on"]),
            "redis_writes": self.writes,
            "errors": self.errors,
        }


def _session_setup(threads: int, data_root: str, stack: Any) -> tuple[Any, ...]:
    """A session on the example experiment, set up with its model, optimizer and loader."""
    import torch
    from loguru import logger

    from tinyexp_core.config.factory import build_exp
    from tinyexp_core.data import load_source, prepare_dataset
    from tinyexp_core.training import TrainingSession

    torch.set_num_threads(threads)
    prepared = prepare_dataset(load_source("digits"), data_root).path
    overrides = [f"data_cfg.prepared_path={prepared}", f"output_root={data_root}/runs"]
    overrides.append("progress_cfg.enabled=false")  # the benchmark swaps reporters itself
    exp = build_exp("tinyexp_core.examples.mnist_exp:Exp", overrides)
    session = stack.enter_context(TrainingSession(exp))
    logger.remove()  # per-step log lines would be timed too
    logger.add(sys.stderr, level="WARNING")
    loader = exp.data_cfg.build_loader("train", session.accelerator, exp.seed)
    model = exp.module_cfg.build_module(exp._in_channels())
    optimizer = exp.optimizer_cfg.build_optimizer(model.parameters())
    model = session.setup(model, optimizer, num_epochs=1, num_steps=len(loader))
    return session, model, optimizer, loader


def _run_slice(session: Any, model: Any, optimizer: Any, batches: StepSlice, reporter: Any):
    """The example's loop body over one slice, reporting to `reporter`."""
    import torch.nn.functional as F

    loop = session._loop  # the benchmark's seam: which reporter the session calls
    loop.reporter, loop.step_in_epoch = reporter, 0
    for x, y in session.batches(batches):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        session.backward(loss)
        optimizer.step()
        session.step(loss, len(y))


def measure(url: str, rounds: int, steps: int, threads: int) -> dict[str, Samples]:
    """Interleaved off/on/control slices for every scenario, after one warm-up round."""
    import contextlib

    with tempfile.TemporaryDirectory(prefix="bench-progress-") as data_root:
        with contextlib.ExitStack() as stack:
            session, model, optimizer, loader = _session_setup(threads, data_root, stack)
            session._loop.begin_epoch(0)
            run = functools.partial(_run_slice, session, model, optimizer, StepSlice(loader, steps))
            return _interleave(run, url, rounds, steps)


def _interleave(run: Any, url: str, rounds: int, steps: int) -> dict[str, Samples]:
    from tinyexp_core.progress import NullProgressReporter, RedisProgressReporter

    results = {name: Samples() for name in SCENARIOS}
    reporters: dict[str, RedisProgressReporter] = {}
    try:
        for name, throttle_s in SCENARIOS.items():
            reporter = RedisProgressReporter(url, f"bench-{name}", throttle_s=throttle_s)
            reporter.start(asset="bench", num_epochs=1, num_steps=3 * (rounds + 1) * steps)
            reporters[name] = reporter
        writes_before: dict[str, int] = {}
        for index in range(rounds + 1):  # round 0 warms up caches and allocators
            if index == 1:
                writes_before = {name: r.writes for name, r in reporters.items()}
            for name in SCENARIOS:
                for side in ORDERS[index % len(ORDERS)]:
                    inner = reporters[name] if side == "on" else NullProgressReporter("bench")
                    timed = TimedReporter(inner)
                    start = time.perf_counter()
                    run(timed)
                    step_s = (time.perf_counter() - start) / steps
                    if index == 0:
                        continue
                    results[name].wall[side].append(step_s)
                    if side == "on":
                        results[name].reporter_s += timed.seconds
                        results[name].steps_on += steps
        for name, reporter in reporters.items():
            results[name].writes = reporter.writes - writes_before[name]
            results[name].errors = reporter.errors
    finally:
        for reporter in reporters.values():
            reporter.finish("succeeded")
            reporter.close()
    return results


def _redis_version(url: str) -> str:
    from bench.common import redis_client

    client = redis_client(url)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured off/on/off rounds")
    parser.add_argument("--steps", type=int, default=10, help="training steps per slice")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    parser.add_argument("--redis-url", default="", help="default: a private local redis-server")
    add_results_arg(parser)
    args = parser.parse_args(argv)

    import torch

    from tinyexp_core import RedisClusterManager

    sizes = {k: v for k, v in vars(args).items() if k not in ("results_dir", "redis_url")}
    run = Run("progress_overhead", sizes)
    server = None if args.redis_url else RedisClusterManager(num_shards=1)
    try:
        if server is not None:
            server.start()
        url = args.redis_url or server.urls[0]
        results = measure(url, args.rounds, args.steps, args.threads)
        redis_version = _redis_version(url)
    finally:
        if server is not None:
            server.stop()
    comparisons = [
        results["production"].comparison("production", TARGET_RATIO),
        results["stress"].comparison("stress", None),
    ]
    share = results["production"].raw()["reporter_share_of_step"]
    notes = (
        f"MNIST example (`tinyexp_core.examples.mnist_exp`, digits data, batch 32), one "
        f"process, torch {torch.__version__} with {args.threads} thread(s), redis-server "
        f"{redis_version} on loopback. Each scenario: {args.rounds} rounds after one warm-up "
        f"round; a round is three slices of {args.steps} steps of the example's own loop "
        "(reporting off, on, off again: the A/A control), in rotating order; a pair is a "
        "round. Production: `throttle_s=2` (the default): the session asks the reporter "
        "every step whether a write is due and writes when 2 s have passed; stress: a Redis "
        "write every step. Measured directly in this run, the time inside the reporter "
        f"(`wants_step` and `step`) was {100 * share:.3f}% of a production step (raw "
        "results, `reporter_share_of_step`)."
    )
    raw = {name: samples.raw() for name, samples in results.items()}
    run.save(raw, comparisons, args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
