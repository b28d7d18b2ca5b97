"""The peer of `retrain_job` for the startup benchmark: a Ray Train `TorchTrainer` script.

It trains what `trained_model` trains (the MNIST example's network, Adam, batch 32 per rank,
2 workers x 1 CPU, 1 torch thread, on the train split of the same prepared dataset, whose
val split it loads too) and writes the same timing marks as TinyExp (`name time pid` lines,
see `tinyexp_core.timing`), so the two can be compared phase by phase:
`imports_done`, `ray_ready`, `fit_start`, `process_group_ready_rank<r>` (Ray Train calls the
training function once the process group is up), `dataset_loaded_rank<r>`,
`first_step_rank<r>`, `fit_end`. Needs `ray[train]` (the `bench` extra).

    .venv/bin/python -m bench.torchtrainer_startup --data PREPARED_DIR --timing-file F
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch  # a training script imports its framework first, as the Dagster side does

_TIMING_FILE = "TINYEXP_TIMING_FILE"


def mark(path: str, name: str) -> None:
    with open(path, "a") as f:
        f.write(f"{name} {time.time():.6f} {os.getpid()}\n")


def train_func(config: dict) -> None:
    import torch.nn.functional as F
    from ray import train
    from ray.train.torch import prepare_model

    from bench.bare_loop import MEAN, STD, build_model, load_train, shard

    ctx = train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    mark(config["timing_file"], f"process_group_ready_rank{rank}")
    torch.set_num_threads(1)
    x, y = load_train(config["data"])
    torch.load(os.path.join(config["data"], "val.pt"))  # the asset loads its val shard too
    mark(config["timing_file"], f"dataset_loaded_rank{rank}")
    model, optimizer = build_model(x.shape[1])
    model = prepare_model(model)
    first = True
    for epoch in range(config["epochs"]):
        idx = shard(len(y), epoch, 0, rank, world_size)
        model.train()
        for i in range(0, len(idx), config["batch_size"]):
            batch = idx[i : i + config["batch_size"]]
            xb = x[batch].float().div_(255).sub_(MEAN).div_(STD)
            loss = F.cross_entropy(model(xb), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if first:
                mark(config["timing_file"], f"first_step_rank{rank}")
                first = False
        train.report({"epoch": epoch, "loss": float(loss)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared dataset directory")
    parser.add_argument("--timing-file", default=os.environ.get(_TIMING_FILE, ""))
    parser.add_argument("--storage", required=True, help="Ray Train's storage_path")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--address",
        default="local",
        help="Ray to run on: 'local' starts one (cold), a GCS address joins a running one (warm)",
    )
    args = parser.parse_args(argv)

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    mark(args.timing_file, "imports_done")
    if args.address == "local":
        # The options TinyExp's launcher starts its local Ray with: a like-for-like Ray start.
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
            object_store_memory=256 * 1024 * 1024,
        )
    else:
        # A Ray that `tinyexp-dagster ray up` runs on loopback with token authentication:
        # joined the way TinyExp's warm start joins it (node IP 127.0.0.1, the token file).
        from tinyexp_core.launchers.ray_session import _connect_loopback

        _connect_loopback(args.address)
    mark(args.timing_file, "ray_ready")
    try:
        trainer = TorchTrainer(
            train_func,
            train_loop_config={
                "data": os.path.abspath(args.data),
                "timing_file": os.path.abspath(args.timing_file),
                "epochs": args.epochs,
                "batch_size": args.batch_size,
            },
            scaling_config=ScalingConfig(
                num_workers=args.workers, use_gpu=False, resources_per_worker={"CPU": 1}
            ),
            run_config=RunConfig(name=f"startup-{os.getpid()}", storage_path=args.storage),
        )
        mark(args.timing_file, "fit_start")
        trainer.fit()
        mark(args.timing_file, "fit_end")
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
