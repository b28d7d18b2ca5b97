"""A sweep with early stopping vs the same sweep without: total wall time and best metric.

Each repetition runs the MNIST example's `--trials`-trial learning-rate sweep twice, once
with `early_stopping={"warmup_epochs": 1, "min_trials": 2}` and once without (the order
alternates between repetitions), each trial a partition run of the pipeline's training
assets (`trained_model`, `model_checkpoint`, `model_evaluation`) through `dg.materialize`,
one after another (max_concurrent=1), on one local Ray (one rank per trial) and an
embedded Redis. Saved: wall time of each sweep, its best validation accuracy, the trials
pruned; compared: wall time with / without (lower is better) and best accuracy with /
without (the price of pruning: 1.0 means the same winner).

    .venv/bin/python -m bench.sweep --reps 3 --epochs 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.results import Run, add_results_arg
from bench.stats import compare

NAME = "sweep_bench"
# Good, middling and hopeless rates: median pruning has something to prune.
LEARNING_RATES = (0.001, 0.003, 0.0003, 0.01, 0.03, 0.1, 1.0, 10.0)
SIDES = ("pruned", "full")


def one_sweep(root: Path, url: str, args: argparse.Namespace, early: bool, tag: str) -> dict:
    """One whole sweep; returns its wall time, best accuracy and statuses by trial."""
    import dagster as dg
    from dagster._core.test_utils import instance_for_test

    from tinyexp_dagster import pipeline_defs
    from tinyexp_dagster.resources import (
        RayDDPResource,
        RedisProgressResource,
        RunScopedJSONIOManager,
        StorageResource,
    )

    overrides = [f"train_cfg.num_epochs={args.epochs}"]
    if args.num_samples:
        overrides += ["data_cfg.source=synthetic", f"data_cfg.num_samples={args.num_samples}"]
    defs = pipeline_defs(
        NAME,
        "tinyexp_core.examples.mnist_exp:Exp",
        overrides,
        sweep={"optimizer_cfg.lr": list(LEARNING_RATES[: args.trials])},
        max_concurrent=1,
        early_stopping={"warmup_epochs": 1, "min_trials": 2} if early else None,
    )
    storage = StorageResource(root=str(root / tag))
    resources = {
        "ray": RayDDPResource(num_workers=1, num_cpus_per_worker=1),
        "redis": RedisProgressResource(url=url),
        "storage": storage,
        "io_manager": RunScopedJSONIOManager(storage=storage),
    }
    assets = [*defs.assets, *defs.asset_checks]
    trial_assets = dg.AssetSelection.assets(
        *[dg.AssetKey([NAME, a]) for a in ("trained_model", "model_checkpoint", "model_evaluation")]
    )
    key = dg.AssetKey([NAME, "trained_model"])
    with instance_for_test() as instance:
        dataset = dg.AssetKey([NAME, "prepared_dataset"])
        prepared = dg.materialize(
            assets, selection=[dataset], instance=instance, resources=resources
        )
        assert prepared.success, "dataset preparation failed"
        started = time.perf_counter()
        for partition in defs.get_assets_def(key).partitions_def.get_partition_keys():
            result = dg.materialize(
                assets,
                selection=trial_assets,
                partition_key=partition,
                instance=instance,
                resources=resources,
                tags={"dagster/backfill": tag},
                raise_on_error=False,
            )
            if not result.success:
                raise RuntimeError(f"trial {partition} failed ({tag})")
        wall = time.perf_counter() - started
        statuses, best = {}, 0.0
        for partition in defs.get_assets_def(key).partitions_def.get_partition_keys():
            [record] = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
            ).records
            metadata = record.asset_materialization.metadata
            statuses[partition] = metadata["sweep_status"].value
            best = max(best, float(metadata["best_val_accuracy"].value))
    return {"wall_s": wall, "best": best, "statuses": statuses}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the paired sweeps, save the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="pairs of sweeps")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial")
    parser.add_argument("--trials", type=int, default=8, help=f"<= {len(LEARNING_RATES)}")
    parser.add_argument(
        "--num-samples", type=int, default=0, help="synthetic samples; 0: the digits data"
    )
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if not 3 <= args.trials <= len(LEARNING_RATES):
        parser.error(f"--trials must be in [3, {len(LEARNING_RATES)}]: min_trials is 2")
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: pruning starts after the first epoch")

    import ray

    from bench.common import embedded_redis

    run = Run("sweep", {k: v for k, v in vars(args).items() if k != "results_dir"})
    raw: dict[str, dict[str, list]] = {s: {"wall_s": [], "best": [], "statuses": []} for s in SIDES}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp, embedded_redis(tmp) as url:
            for rep in range(args.reps):
                order = SIDES if rep % 2 == 0 else SIDES[::-1]
                for side in order:
                    res = one_sweep(Path(tmp), url, args, side == "pruned", f"{side}-{rep}")
                    print(f"rep {rep} {side}: {res['wall_s']:.1f} s, best {res['best']:.4f}, "
                          f"{sorted(res['statuses'].values())}", flush=True)  # fmt: skip
                    for field in ("wall_s", "best", "statuses"):
                        raw[side][field].append(res[field])
    finally:
        ray.shutdown()
    comparisons = [
        compare(
            "sweep wall time, early stopping / none",
            raw["pruned"]["wall_s"],
            raw["full"]["wall_s"],
            target=None,
            direction="lower",
            control=None,
            what=f"seconds for the {args.trials} trials, one after another",
        ),
        compare(
            "best val accuracy, early stopping / none",
            raw["pruned"]["best"],
            raw["full"]["best"],
            target=None,
            direction="higher",
            control=None,
            what="the sweep's best trial's best validation accuracy",
        ),
    ]
    pruned = [sum(s == "pruned" for s in st.values()) for st in raw["pruned"]["statuses"]]
    notes = (
        f"The MNIST example, learning rates {list(LEARNING_RATES[: args.trials])}, "
        f"{args.epochs} epochs per trial, one Ray rank per trial, trials one after another; "
        "median pruning after a 1-epoch warm-up with at least 2 other trials at the epoch. "
        f"Trials pruned per sweep: {pruned}. Best accuracies: with {raw['pruned']['best']}, "
        f"without {raw['full']['best']}."
    )
    run.save(raw, comparisons, args.results_dir, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
