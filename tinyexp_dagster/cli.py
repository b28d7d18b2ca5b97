"""`tinyexp-dagster`: the pipeline's console command.

tinyexp-dagster summary          latest accuracy, checkpoint and how to open the UI
tinyexp-dagster redis url|stop   the embedded Redis under the storage root
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .resources.storage import default_storage_root


def cmd_summary(_: argparse.Namespace) -> int:
    """Print the latest evaluation and promoted checkpoint from the Dagster instance."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    evaluation = instance.get_latest_materialization_event(dg.AssetKey("model_evaluation"))
    checkpoint = instance.get_latest_materialization_event(dg.AssetKey("model_checkpoint"))
    if evaluation is None or checkpoint is None:
        print("no model_evaluation materialization yet: run `make run` first", file=sys.stderr)
        return 1
    ev_meta = evaluation.asset_materialization.metadata
    ck_meta = checkpoint.asset_materialization.metadata
    print(f"accuracy ({ev_meta['split'].value} split): {ev_meta['accuracy'].value:.4f}")
    print(f"checkpoint: {ck_meta['model_path'].value}")
    print(f"sha256: {ck_meta['sha256'].value}")
    print("open the UI: make dev, then http://127.0.0.1:3000 (same DAGSTER_HOME)")
    return 0


def cmd_redis(args: argparse.Namespace) -> int:
    """Show or stop the embedded Redis that serves this storage root."""
    from tinyexp_core.redis_utils import EmbeddedRedis

    server = EmbeddedRedis(args.storage_root)
    if args.action == "url":
        url = server.url()
        print(url or "no embedded Redis running for this storage root")
        return 0 if url else 1
    stopped = server.stop()
    print("stopped the embedded Redis" if stopped else "no embedded Redis was running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyexp-dagster", description=__doc__.splitlines()[0])
    parser.add_argument("--storage-root", default=default_storage_root())
    sub = parser.add_subparsers(dest="command", required=True)
    summary = sub.add_parser("summary", help="latest accuracy and promoted checkpoint")
    summary.set_defaults(func=cmd_summary)
    redis = sub.add_parser("redis", help="the embedded Redis server")
    redis.add_argument("action", choices=("url", "stop"))
    redis.set_defaults(func=cmd_redis)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
