"""The default path against what a user would write: `retrain_job` vs a torchrun script
(issue 14).

Ours: `dagster job execute -m <code location> -j retrain_job` with N epochs: the MNIST
example's loop on 2 Ray ranks with DDP, validation every epoch, the pipeline's checkpoints,
Redis progress on (the embedded server, already running as after a first run), then
promotion and evaluation. Theirs: `bench/torchrun_script.py` under
`torchrun --nproc-per-node 2`: the same model, prepared tensors, batch, optimizer and
schedule, validation and `torch.save` every epoch. Both read the digits dataset that
`prepared_dataset` prepared once at setup.

A round runs ours twice, cold (no local Ray running: the run starts the storage root's
Ray, as a first run does) and warm (that Ray already running with its warm ranks, as from
the second run on), and the torchrun script twice (the second run is the A/A control), one
after the other, in an order that changes every round (`bench.common.turn_order`: each side
goes first equally often); a pair is a round. Before each run, untimed: the Ray is stopped
(cold) or started (warm), and a warm Ray's pool of warm ranks has refilled, so no run pays
for the one before it. Per run:

- epoch-to-epoch wall time: the mean time between consecutive epoch ends (epochs 2..N;
  an epoch end is after validation and the checkpoint: ours from the `epoch_end` events'
  stream ids in Redis, theirs from the script's own clock), compared as torchrun's over
  ours warm (a speed ratio): target >= 0.95;
- whole-job wall time, process spawn to exit, ours over torchrun's: warm <= 1.3, cold
  <= 1.8 (ours also promotes and evaluates);
- time to first step, process spawn to rank 0's first optimizer step, ours over
  torchrun's: warm <= 1.0, cold <= 2.0;
- peak memory (issue 24): the peak resident set (VmHWM) of each process, from a sampler
  thread in this process (`bench.peak_rss`: /proc every 0.2 s, ~1-2% of one core, its busy
  seconds saved per run). Ours: the step process (the `dagster job execute` process: the
  in-process executor runs the step in it) and each of its 2 Ray ranks (the rank actors
  whose timing marks this run wrote; a warm rank's peak is reset right before the run, so
  its warm-up before the run does not count); theirs: each torchrun rank (the agent's
  children) and, for information, the agent. Compared against the torchrun script's
  largest rank, lower is better: ours' largest rank, warm and cold, <= 1.1; the step
  process, warm, <= 1.1.

    .venv/bin/python -m bench.torchrun_compare [--reps 5] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import (
    embedded_server,
    free_port,
    local_ray,
    python,
    redis_client,
    settle_local_ray,
    stop_local_ray,
    turn_order,
)
from bench.names import CODE_LOCATION, RETRAIN_JOB
from bench.peak_rss import Sampler, children, mib, rank_pids, reset_rank_peaks, spawn_sampled
from bench.results import Run, add_results_arg
from bench.startup import DAGSTER, dagster_env, run_config, setup
from bench.stats import compare
from bench.torchrun_script import RESULT_PREFIX
from tinyexp_core.timing import read_marks

TARGET = 0.95
SIDES = ("cold", "warm", "torchrun", "torchrun2")  # cold / warm: ours, without / with a Ray
# (side, key, label, target): ours over torchrun's, lower is better
JOB_TARGETS = (
    ("warm", "job_s", "whole-job wall time, warm", 1.3),
    ("warm", "first_step_s", "time to first step, warm", 1.0),
    ("cold", "job_s", "whole-job wall time, cold", 1.8),
    ("cold", "first_step_s", "time to first step, cold", 2.0),
)
MEMORY_TARGET = 1.1
# (side, key, label): peak MiB of ours over the torchrun script's largest rank, lower is better
MEMORY_TARGETS = (
    ("warm", "largest_rank_mib", "peak RSS, largest rank, warm"),
    ("cold", "largest_rank_mib", "peak RSS, largest rank, cold"),
    ("warm", "step_mib", "peak RSS, step process, warm"),
)
MARKER = "TINYEXP_BENCH_MARKER"  # in this benchmark's environment, so in its Ray ranks'
SCRIPT = Path(__file__).resolve().with_name("torchrun_script.py")


def latest_run_id(dagster_home: Path) -> str:
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        (latest,) = instance.get_runs(limit=1)
        return latest.run_id
    finally:
        instance.dispose()


def epoch_end_times(url: str, run_id: str) -> list[float]:
    """Unix times of a run's `epoch_end` progress events (their stream ids are ms stamps)."""
    from tinyexp_core.progress import EVENTS_STREAM

    client = redis_client(url)
    try:
        entries = client.xrange(EVENTS_STREAM)
    finally:
        client.close()
    ends = []
    for entry_id, fields in entries:
        fields = {_text(k): _text(v) for k, v in fields.items()}
        if fields.get("run_id") == run_id and fields.get("event") == "epoch_end":
            ends.append(int(_text(entry_id).split("-")[0]) / 1000)
    return ends


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def ours(tmp: Path, rep: str, epochs: int, url: str) -> dict:
    timing = tmp / f"ours-{rep}.txt"
    config = tmp / "retrain.yaml"
    config.write_text(run_config(epochs))
    cmd = [DAGSTER, "job", "execute", "-m", CODE_LOCATION, "-j", RETRAIN_JOB, "-c", str(config)]
    reset = reset_rank_peaks(str(tmp))  # warm ranks live across runs: this run's peak only
    sampler = Sampler(lambda table, _root: rank_pids(table))
    start, end, _ = spawn_sampled(cmd, sampler, env=dagster_env(tmp, timing))
    ends = epoch_end_times(url, latest_run_id(tmp / "dagster_home"))
    if len(ends) != epochs:
        raise RuntimeError(f"{RETRAIN_JOB} reported {len(ends)} epoch ends, expected {epochs}")
    marks = read_marks(str(timing))
    first = min(t for name, t, _ in marks if name == "first_step_rank0")
    ranks = sorted({pid for name, _, pid in marks if name.startswith("process_group_ready_rank")})
    if len(ranks) != 2 or not set(ranks) <= set(sampler.peaks):
        raise RuntimeError(f"rank processes {ranks}, sampled {sorted(sampler.peaks)}")
    rank_mib = [mib(sampler.peaks[pid]) for pid in ranks]
    return {
        "first_step_s": first - start,
        "job_s": end - start,
        "epoch_ends_s": [t - start for t in ends],
        "step_mib": mib(sampler.peaks.get(sampler.root)),
        "rank_mib": rank_mib,
        "largest_rank_mib": max(rank_mib),
        "ranks_reset": reset,
        "sampler_busy_s": sampler.busy_s,
    }


def torchrun(tmp: Path, name: str, epochs: int, prepared: str) -> dict:
    cmd = [python(), "-m", "torch.distributed.run", "--nproc-per-node=2"]
    cmd += ["--master-addr=127.0.0.1", f"--master-port={free_port()}", str(SCRIPT)]
    cmd += ["--data", prepared, "--out", str(tmp / name), "--epochs", str(epochs)]
    # One thread per rank and gloo on loopback, as the Ray launcher sets up its ranks.
    env = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    sampler = Sampler(children)
    start, end, out = spawn_sampled(cmd, sampler, env=env)
    rank_mib = [mib(kib) for pid, kib in sorted(sampler.peaks.items()) if pid != sampler.root]
    (line,) = [x for x in out.splitlines() if x.startswith(RESULT_PREFIX)]
    found = json.loads(line[len(RESULT_PREFIX) :])
    return {
        "first_step_s": found["first_step"] - start,
        "job_s": end - start,
        "epoch_ends_s": [t - start for t in found["epoch_ends"]],
        "agent_mib": mib(sampler.peaks.get(sampler.root)),
        "rank_mib": rank_mib,
        "largest_rank_mib": max(rank_mib),
        "sampler_busy_s": sampler.busy_s,
    }


def epoch_to_epoch(run: dict) -> float:
    """Mean seconds between consecutive epoch ends of one run."""
    ends = run["epoch_ends_s"]
    return statistics.fmean(b - a for a, b in zip(ends, ends[1:], strict=False))


def comparisons(runs: dict[str, list[dict]]) -> list[dict]:
    def per_run(key, side):
        return [epoch_to_epoch(r) if key == "epoch" else r[key] for r in runs[side]]

    epoch = {side: per_run("epoch", side) for side in SIDES}
    out = [
        compare(
            f"9. epoch-to-epoch wall time, torchrun script / {RETRAIN_JOB} warm (speed)",
            epoch["torchrun"],
            epoch["warm"],
            target=TARGET,
            direction="higher",
            control=(epoch["torchrun2"], epoch["torchrun"]),
            what="mean seconds between epoch ends (validation, checkpoint included), theirs "
            "over ours: >= 0.95 means ours is at most ~5% slower",
        )
    ]
    for side, key, label, target in JOB_TARGETS:
        out.append(
            compare(
                f"9. {label}, {RETRAIN_JOB} / torchrun script",
                per_run(key, side),
                per_run(key, "torchrun"),
                target=target,
                direction="lower",
                control=(per_run(key, "torchrun2"), per_run(key, "torchrun")),
                what=f"seconds from process spawn ({label}), ours over theirs",
            )
        )
    return out + memory_comparisons(runs)


def memory_comparisons(runs: dict[str, list[dict]]) -> list[dict]:
    """Peak resident memory of ours' processes over the torchrun script's largest rank."""
    theirs = [r["largest_rank_mib"] for r in runs["torchrun"]]
    control = ([r["largest_rank_mib"] for r in runs["torchrun2"]], theirs)
    return [
        compare(
            f"9. {label} / torchrun script's largest rank",
            [r[key] for r in runs[side]],
            theirs,
            target=MEMORY_TARGET,
            direction="lower",
            control=control,
            what="peak resident set (VmHWM, MiB) over the run, ours over theirs",
        )
        for side, key, label in MEMORY_TARGETS
    ]


def one_run(tmp: Path, side: str, rep: int, args: argparse.Namespace, url: str, prepared: str):
    """One timed run of `side`, after its untimed setup."""
    if side in ("cold", "warm"):
        local_ray(tmp / "root", warm=side == "warm")
        settle_local_ray(tmp / "root")
        return ours(tmp, f"{side}-{rep}", args.epochs, url)
    settle_local_ray(tmp / "root")
    return torchrun(tmp, f"{side}-{rep}", args.epochs, prepared)


def memory_extra(res: dict) -> str:
    if "step_mib" in res:
        return f", step {res['step_mib']:.0f} ({res['ranks_reset']} warm rank peaks reset)"
    return f", agent {res['agent_mib']:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="rounds (>= 2 for an interval)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (>= 2)")
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: epoch-to-epoch times need two epoch ends")

    bench_run = Run("torchrun_compare", {k: v for k, v in vars(args).items() if k != "results_dir"})
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="bench-torchrun-") as name:
        tmp = Path(name)
        os.environ[MARKER] = str(tmp)  # the Ray this run starts passes it on to its ranks
        server = embedded_server(tmp / "root")
        try:
            prepared = setup(tmp)
            url = server.ensure()
            for rep in range(args.reps):
                for side in turn_order(SIDES, rep):
                    res = one_run(tmp, side, rep, args, url, prepared)
                    runs[side].append(res)
                    print(
                        f"rep {rep} {side}: first step {res['first_step_s']:.1f} s, epoch to "
                        f"epoch {epoch_to_epoch(res):.2f} s, job {res['job_s']:.1f} s, peak "
                        f"MiB: ranks {[round(m) for m in res['rank_mib']]}"
                        f"{memory_extra(res)}",
                        flush=True,
                    )
        finally:
            stop_local_ray(tmp / "root")
            server.stop()
    notes = (
        f"{args.epochs} epochs of the MNIST example's network on the default digits data, 2 "
        "ranks x 1 CPU, 1 torch thread per rank, batch 32 per rank, gloo over loopback, on "
        "both sides. Ours: the whole `retrain_job` (train on 2 Ray ranks with progress and "
        "checkpoints, then promote and evaluate) on the default local Ray: cold, started by "
        "the run; warm, left by an earlier run with its warm ranks ready; each rank sets "
        "glibc malloc's thresholds before training (`steady_malloc`, "
        "docs/running-modes.md). Theirs: `bench/torchrun_script.py`, as a user writes it "
        "(glibc malloc as it comes). Every run's epoch-end times, first step "
        "and exit (seconds from spawn) are in the raw results, and its peak resident "
        "memory (VmHWM, MiB, sampled every 0.2 s): ours' step process and ranks, "
        "torchrun's ranks and agent."
    )
    bench_run.save({"runs": runs}, comparisons(runs), args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
