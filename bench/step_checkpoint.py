"""Step time with and without periodic step checkpoints (snapshot on the step, background write).

Runs the MNIST example's network and optimizer on random 28x28 batches in this process,
`--steps` steps per trial, alternating trials without and with a step checkpoint every
`--every` steps (the same calls the training loop makes: every rank's RNG, the checkpoint
dict, `StepCheckpointWriter.submit`). Prints the median and mean step time of each and the
ratio of means with a 95% bootstrap interval; "inconclusive" when it straddles 1.

    .venv/bin/python bench/step_checkpoint.py --steps 200 --every 20 --trials 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from tinyexp_core import checkpoint as ckpt
from tinyexp_core.examples.mnist_exp import Net
from tinyexp_core.step_checkpoint import StepCheckpointWriter, gather_rng_states


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


def _ratio_interval(on: list[float], off: list[float], n: int = 2000) -> tuple[float, float]:
    rng = random.Random(0)
    ratios = sorted(
        statistics.mean(rng.choices(on, k=len(on))) / statistics.mean(rng.choices(off, k=len(off)))
        for _ in range(n)
    )
    return ratios[int(0.025 * n)], ratios[int(0.975 * n)]


def main() -> None:
    """Parse arguments, run the alternating trials, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    off: list[float] = []
    on: list[float] = []
    with tempfile.TemporaryDirectory() as directory:
        _trial(20, 0, args.batch, directory)  # warm-up
        for _ in range(args.trials):
            off += _trial(args.steps, 0, args.batch, directory)
            on += _trial(args.steps, args.every, args.batch, directory)
    low, high = _ratio_interval(on, off)
    ratio = statistics.mean(on) / statistics.mean(off)
    verdict = "inconclusive" if low <= 1.0 <= high else ("slower" if low > 1 else "faster")
    print(f"steps per trial {args.steps}, checkpoint every {args.every}, trials {args.trials}")
    for name, times in (("off", off), ("on", on)):
        print(
            f"{name:>3}: median {statistics.median(times) * 1e3:.2f} ms, "
            f"mean {statistics.mean(times) * 1e3:.2f} ms, max {max(times) * 1e3:.1f} ms"
        )
    print(f"mean step time on/off: {ratio:.3f} (95% bootstrap interval {low:.3f}..{high:.3f}): "
          f"{verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
