"""Step time with background upload of step checkpoints to an object store on / off, and the
time to resume from the bucket on a node with an empty cache.

The MNIST example's network and Adam in this process, step checkpoints every `--every`
steps written in the background (`StepCheckpointWriter`, as the training loop does). Off:
the storage root is a local folder (written, nothing uploaded). On: the root is
`s3://bench/root` on an S3-compatible server on 127.0.0.1 (moto's, in its own process), so
every checkpoint is also uploaded by the background uploader, with its sha256 sidecar. A
round runs off / on / off again (the A/A control) in a rotating order; the ratio on / off of
the trials' mean step times, paired by round, with its 95% interval (`bench.stats`).
Target: <= 1.02. Then `--resumes` times: a fresh node cache resumes from the bucket (list,
download, verify, load) against a resume from local disk (no target, reported).

    .venv/bin/python -m bench.storage_upload [--steps 200] [--every 20] [--trials 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import Run, add_results_arg
from bench.stats import compare


def _trial(steps: int, every: int, batch: int, directory: str) -> list[float]:
    """Per-step seconds of the MNIST net's training step, one process, with a background
    step checkpoint every `every` steps into `directory` (a remote root's node mirror
    uploads each file in the background; a local directory does not)."""
    import torch
    import torch.nn.functional as F

    from tinyexp_core import checkpoint as ckpt
    from tinyexp_core.examples.nets import Net
    from tinyexp_core.training.step_checkpoint import StepCheckpointWriter

    torch.manual_seed(0)
    model = Net(10, 1, 0.25)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    times = []
    with StepCheckpointWriter(ckpt.CheckpointManager(directory, keep_last_n=2)) as writer:
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if every and step % every == 0:
                state = ckpt.build_checkpoint(model=model, optimizer=optimizer, epoch=0,
                                              step=step)  # fmt: skip
                writer.submit(state)
            times.append(time.perf_counter() - t0)
    return times


TARGET = 1.02
SIDES = ("off", "on", "off2")


def _server() -> subprocess.Popen:
    """moto's S3 server in a process of its own (so its request handling does not share this
    process's GIL with the training loop) on a free loopback port, with a bucket; the AWS
    environment points at it."""
    import socket

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        server.kill()
        raise RuntimeError(f"moto server did not listen on 127.0.0.1:{port}")
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="bench")
    return server


def _resume_times(root: str, run: str, local_dir: str, reps: int, cache: Path) -> dict:
    """Seconds to the loaded state: from the bucket into an empty node cache, and from disk."""
    from tinyexp_core import storage
    from tinyexp_core.checkpoint import CheckpointManager

    bucket, local = [], []
    for rep in range(reps):
        os.environ[storage.ENV_NODE_CACHE] = str(cache / f"fresh-{rep}")
        t0 = time.perf_counter()
        found = CheckpointManager(storage.local_path(f"{root}/{run}")).latest_valid()
        bucket.append(time.perf_counter() - t0)
        assert found is not None
        t0 = time.perf_counter()
        assert CheckpointManager(local_dir).latest_valid() is not None
        local.append(time.perf_counter() - t0)
    return {"bucket": bucket, "local": local}


def _measure(args: argparse.Namespace) -> tuple[dict[str, list[list[float]]], dict]:
    """Step times per side and trial, then resume times, against a server started here."""
    from tinyexp_core import storage

    server = _server()
    root = "s3://bench/root"
    times: dict[str, list[list[float]]] = {side: [] for side in SIDES}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ[storage.ENV_NODE_CACHE] = str(Path(tmp) / "node")
            storage.check_storage(root)
            remote_dir = str(storage.local_path(f"{root}/runs/r/checkpoints"))
            local_dir = str(Path(tmp) / "local" / "checkpoints")
            _trial(20, 0, args.batch, local_dir)  # warm-up
            for rep in range(args.trials):
                for side in SIDES[rep % 3 :] + SIDES[: rep % 3]:
                    directory = remote_dir if side == "on" else local_dir
                    times[side].append(_trial(args.steps, args.every, args.batch, directory))
                storage.uploader_for(remote_dir).flush()  # the round's uploads are done
            resumes = _resume_times(root, "runs/r/checkpoints", local_dir, args.resumes, Path(tmp))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return times, resumes


def _comparisons(args: argparse.Namespace, times: dict, resumes: dict) -> list[dict]:
    mean = {side: [statistics.fmean(t) for t in trials] for side, trials in times.items()}
    for side in SIDES:
        flat = [x for trial in times[side] for x in trial]
        print(
            f"{side:>4}: median {statistics.median(flat) * 1e3:.2f} ms, "
            f"mean {statistics.fmean(flat) * 1e3:.2f} ms",
            flush=True,
        )
    for side, values in resumes.items():
        print(f"resume from {side}: median {statistics.median(values) * 1e3:.1f} ms", flush=True)
    return [
        compare(
            f"13. step time, background upload of step checkpoints every {args.every} "
            "steps on / off",
            mean["on"],
            mean["off"],
            target=TARGET,
            direction="lower",
            control=(mean["off2"], mean["off"]),
            what="mean step time of a trial (checkpoint steps included), S3 root over local",
        ),
        compare(
            "13b. time to resume, from the bucket into an empty node cache / from local disk",
            resumes["bucket"],
            resumes["local"],
            target=None,
            direction="lower",
            control=None,
            what="seconds from CheckpointManager.latest_valid() call to the loaded state",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Alternating trials off / on / off again; then resume times; save the comparisons."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per trial")
    parser.add_argument("--every", type=int, default=20, help="a step checkpoint every N steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--trials", type=int, default=6, help="rounds (>= 2 for an interval)")
    parser.add_argument("--resumes", type=int, default=5, help="resumes timed, each side")
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.every < 1 or args.steps < args.every:
        parser.error("--every must be >= 1 and at most --steps: a trial must checkpoint")
    import torch

    run = Run("storage_upload", {k: v for k, v in vars(args).items() if k != "results_dir"})
    torch.set_num_threads(1)
    times, resumes = _measure(args)
    notes = (
        f"The MNIST example's network and Adam on one random batch of {args.batch} images, "
        f"1 torch thread, {args.steps} steps per trial, a step checkpoint every {args.every} "
        "steps written in the background. Off: a local storage root. On: an s3:// root on "
        "moto's S3 server on 127.0.0.1 in its own process (real HTTP), every checkpoint also "
        "uploaded in the background with its sha256 sidecar. Resume: latest_valid() in a "
        "fresh node cache (list, download, verify sha256, load) against the same from disk."
    )
    comparisons = _comparisons(args, times, resumes)
    run.save({"step_s": times, "resume_s": resumes}, comparisons, args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
