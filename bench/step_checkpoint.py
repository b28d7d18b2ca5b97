"""Step time with and without periodic step checkpoints (snapshot on the step, background write).

Runs the MNIST example's network and optimizer on random 28x28 batches in this process,
`--steps` steps per trial, alternating trials without and with a step checkpoint every
`--every` steps (the same calls the training loop makes: every rank's RNG, the checkpoint
dict, `StepCheckpointWriter.submit`), and a second trial without as the A/A control. The
ratio on / off of the trials' mean step times, paired by round, with its 95% interval
(`bench.stats`). Target: <= 1.02.

    .venv/bin/python -m bench.step_checkpoint [--steps 200] [--every 20] [--trials 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from bench.results import Run, add_results_arg
from bench.stats import compare
from tinyexp_core import checkpoint as ckpt
from tinyexp_core.examples.mnist_exp import Net
from tinyexp_core.step_checkpoint import StepCheckpointWriter, gather_rng_states

TARGET = 1.02


class _OneRank:
    world_size = 1


def _trial(steps: int, every: int, batch: int, directory: str) -> list[float]:
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    times = []
    with StepCheckpointWriter(ckpt.CheckpointManager(directory, keep_last_n=2)) as writer:
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if every and step % every == 0:
                state = ckpt.build_checkpoint(
                    model=model,
                    optimizer=optimizer,
                    epoch=0,
                    step=step,
                    position={"epoch": 0, "step_in_epoch": step},
                    rng_ranks=gather_rng_states(_OneRank()),
                )
                writer.submit(state)
            times.append(time.perf_counter() - t0)
    return times


SIDES = ("off", "on", "off2")


def main(argv: list[str] | None = None) -> int:
    """Alternating trials off / on / off again (the A/A control); save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per trial")
    parser.add_argument("--every", type=int, default=20, help="a step checkpoint every N steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--trials", type=int, default=6, help="rounds (>= 2 for an interval)")
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.every < 1 or args.steps < args.every:
        parser.error("--every must be >= 1 and at most --steps: a trial must checkpoint")

    run = Run("step_checkpoint", {k: v for k, v in vars(args).items() if k != "results_dir"})
    torch.set_num_threads(1)
    times: dict[str, list[list[float]]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as directory:
        _trial(20, 0, args.batch, directory)  # warm-up
        for rep in range(args.trials):
            for side in SIDES[rep % 3 :] + SIDES[: rep % 3]:
                every = args.every if side == "on" else 0
                times[side].append(_trial(args.steps, every, args.batch, directory))
    mean = {side: [statistics.fmean(t) for t in trials] for side, trials in times.items()}
    for side in SIDES:
        flat = [x for trial in times[side] for x in trial]
        print(
            f"{side:>4}: median {statistics.median(flat) * 1e3:.2f} ms, "
            f"mean {statistics.fmean(flat) * 1e3:.2f} ms, max {max(flat) * 1e3:.1f} ms",
            flush=True,
        )
    comparison = compare(
        f"10. step time, step checkpoints every {args.every} steps on / off",
        mean["on"],
        mean["off"],
        target=TARGET,
        direction="lower",
        control=(mean["off2"], mean["off"]),
        what="mean step time of a trial (the checkpoint steps included), on over off",
    )
    notes = (
        f"The MNIST example's network and Adam on one random batch of {args.batch} 28x28 "
        f"images in one process, 1 torch thread, {args.steps} steps per trial; a round runs "
        f"a trial without step checkpoints, one with a checkpoint every {args.every} steps "
        "(snapshot on the step, write in the background: `StepCheckpointWriter`) and the "
        "first again (the A/A control), in an order that rotates every round. A pair is a "
        "round: the ratio of the two trials' mean step times. Every step time is in the raw "
        "results."
    )
    run.save({"step_s": times}, [comparison], args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
