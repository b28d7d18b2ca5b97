"""Step time with and without periodic step checkpoints (snapshot on the step, background write).

Two ranks on two cores, as a CPU DDP job runs here: two processes (gloo over loopback, 1
torch thread each) train the MNIST example's network wrapped in DDP with Adam on random
28x28 batches, `--steps` steps per trial; rank 0 writes the checkpoint, so its background
writer competes with the other rank for the cores (measured in one process, the writer got
an idle core). A round runs a trial without step checkpoints, one with a checkpoint every
`--every` steps (the same calls the training loop makes: every rank's RNG, the checkpoint
dict, `StepCheckpointWriter.submit`), and another without (the A/A control), in an order
that changes every round (`bench.common.turn_order`). The ratio: the "on" trial's mean step
time (rank 0's; DDP keeps the ranks in step) over the mean of the two "off" trials', paired
by round, with its 95% interval (`bench.stats`); the A/A control is the second "off" over
the first. Target: <= 1.02.

    .venv/bin/python -m bench.step_checkpoint [--steps 200] [--every 20] [--trials 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from bench.common import free_port, turn_order
from bench.results import Run, add_results_arg
from bench.stats import compare
from tinyexp_core import checkpoint as ckpt
from tinyexp_core.examples.mnist_exp import Net
from tinyexp_core.training.step_checkpoint import StepCheckpointWriter, gather_rng_states

TARGET = 1.02


WORLD_SIZE = 2


class _Ranks:
    world_size = WORLD_SIZE


def _trial(steps: int, every: int, batch: int, directory: str, rank: int) -> list[float]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = DDP(Net())
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
                rng = gather_rng_states(_Ranks())  # a collective, on every rank
                if rank == 0:
                    state = ckpt.build_checkpoint(
                        model=model.module,
                        optimizer=optimizer,
                        epoch=0,
                        step=step,
                        position={"epoch": 0, "step_in_epoch": step},
                        rng_ranks=rng,
                    )
                    writer.submit(state)
            times.append(time.perf_counter() - t0)
        torch.distributed.barrier()  # a trial ends together: the next starts together
    return times


def _rank(rank: int, port: int, plan: list[tuple[str, int]], args: dict, out: dict) -> None:
    """One rank: every trial of `plan` ((side, every) in order); rank 0 reports its times."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        with tempfile.TemporaryDirectory() as directory:
            _trial(20, 0, args["batch"], directory, rank)  # warm-up
            for index, (side, every) in enumerate(plan):
                times = _trial(args["steps"], every, args["batch"], directory, rank)
                if rank == 0:
                    out[index] = (side, times)
    finally:
        dist.destroy_process_group()


def run_trials(plan: list[tuple[str, int]], args: argparse.Namespace) -> list[tuple]:
    """The trials of `plan` on two rank processes; rank 0's (side, step times) in order."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        out = manager.dict()
        sizes = {"batch": args.batch, "steps": args.steps}
        mp.spawn(_rank, args=(free_port(), plan, sizes, out), nprocs=WORLD_SIZE, join=True)
        return [out[i] for i in range(len(plan))]


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
    plan = [
        (side, args.every if side == "on" else 0)
        for rep in range(args.trials)
        for side in turn_order(SIDES, rep)
    ]
    times: dict[str, list[list[float]]] = {side: [] for side in SIDES}
    for side, trial in run_trials(plan, args):
        times[side].append(list(trial))
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
        [(a + b) / 2 for a, b in zip(mean["off"], mean["off2"], strict=True)],
        target=TARGET,
        direction="lower",
        control=(mean["off2"], mean["off"]),
        what="mean step time of a trial (the checkpoint steps included), on over the mean "
        "of the round's two off trials",
    )
    notes = (
        f"The MNIST example's network in DDP and Adam on one random batch of {args.batch} "
        f"28x28 images per rank, 2 rank processes (gloo over loopback, 1 torch thread each) "
        f"on this machine's cores, {args.steps} steps per trial; rank 0 writes. A round runs "
        f"a trial without step checkpoints, one with a checkpoint every {args.every} steps "
        "(every rank's RNG gathered, snapshot on the step, write in the background: "
        "`StepCheckpointWriter`) and another without (the A/A control), in an order that "
        "changes every round (`bench.common.turn_order`). A pair is a round: the on trial's "
        "mean step time over the mean of the two off trials'. Rank 0's step times are in the "
        "raw results."
    )
    run.save({"step_s": times}, [comparison], args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
