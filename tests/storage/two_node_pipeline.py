"""The pipeline on a two-node Ray with the storage root in an S3-compatible server: run as
a program (its own Ray cluster, apart from the test session's), it prints one JSON report.

Node A (the head, custom resource `node_a`) and node B (`node_b`) each have one CPU, so the
two ranks land one per node, and each its own node cache and temp dir. The driver works in a
third cache. The driver's copy of the prepared dataset is deleted before training: a rank
that read the driver's storage directory instead of the bucket would fail.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

RAY_TOKEN = "tinyexp-ray-token-0123456789abcdef0123456789abcdef"


def main(work: Path, redis_url: str, mode: str) -> dict:
    import pytest

    from tests.storage.s3_server import s3_server

    with pytest.MonkeyPatch.context() as mp, s3_server(mp) as s3:
        # A token-auth cluster, as Ray 2.59+ makes by default: nodes, driver and ranks read
        # the token from the environment; the test checks that no log shows it.
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", RAY_TOKEN)
        if mode == "kill":
            from tests.storage.two_node_kill import run_kill

            return run_kill(work, redis_url, s3, mp, _cluster)
        return _run(work, redis_url, s3, mp)


def node_args(work: Path, name: str) -> dict:
    """One CPU, a custom resource named after the node, its own node cache and temp dir."""
    (work / name / "tmp").mkdir(parents=True)
    return {
        "num_cpus": 1,
        "resources": {name: 1},
        "env_vars": {
            "TINYEXP_NODE_CACHE": str(work / name / "cache"),
            "TMPDIR": str(work / name / "tmp"),
        },
        "object_store_memory": 128 * 1024 * 1024,
    }


def _cluster(work: Path):
    from ray.cluster_utils import Cluster

    nodes = {}
    for name in ("node_a", "node_b"):
        nodes[name] = node_args(work, name)
    cluster = Cluster(initialize_head=True, head_node_args=nodes["node_a"])
    cluster.add_node(**nodes["node_b"])
    cluster.wait_for_nodes()
    return cluster


def _run(work: Path, redis_url: str, s3, mp) -> dict:
    import dagster as dg
    from dagster._core.test_utils import instance_for_test

    from tests.dagster.support import ASSET_CHECKS, ASSETS, key, run_config
    from tinyexp_core.storage import local_path
    from tinyexp_dagster.resources import (
        RayDDPResource,
        RedisProgressResource,
        StallSettingsResource,
        StorageResource,
    )

    root = f"s3://{s3.bucket}/team"
    cluster = _cluster(work)  # its raylets inherit the AWS_* environment set above
    mp.setenv("TINYEXP_NODE_CACHE", str(work / "driver" / "cache"))
    resources = {
        "ray": RayDDPResource(address=cluster.address, num_workers=2, num_cpus_per_worker=1),
        "redis": RedisProgressResource(url=redis_url),
        "storage": StorageResource(root=root),
        "stalls": StallSettingsResource(),
    }
    report: dict = {"root": root, "bucket": s3.bucket}
    try:
        with instance_for_test() as instance:

            def materialize(names: list[str]) -> dg.ExecuteInProcessResult:
                return dg.materialize(
                    [*ASSETS, *ASSET_CHECKS],
                    selection=[key(n) for n in names],
                    instance=instance,
                    resources=resources,
                    run_config=run_config(names),
                )

            materialize(["prepared_dataset"])
            driver_mirror = local_path(root)
            shutil.rmtree(driver_mirror / "datasets")  # ranks must read the bucket
            done = materialize(["trained_model", "model_checkpoint", "model_evaluation"])
            report["success"] = done.success
            report["trained"] = done.output_for_node("mnist__trained_model")
            report["checkpoint"] = done.output_for_node("mnist__model_checkpoint")
            report["checks"] = {
                e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
                for e in done.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION"
            }
            report["driver_files"] = _files(driver_mirror)
        report |= _bucket_report(work, s3, report["trained"]["run_id"])
        report["champion"] = _champion(s3, report)
        report["tokenless_rc"] = _connect_without_token(cluster.address, work)
    finally:
        cluster.shutdown()
    return report


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def _bucket_report(work: Path, s3, run_id: str) -> dict:
    """What each node cached, what the bucket holds, and the run's records from the bucket."""
    client = s3.client()
    objects = client.list_objects_v2(Bucket=s3.bucket).get("Contents", [])
    run = f"team/runs/{run_id}"
    return {
        "node_files": {name: _files(work / name / "cache") for name in ("node_a", "node_b")},
        "objects": sorted(o["Key"] for o in objects),
        "records": {
            name: client.get_object(Bucket=s3.bucket, Key=f"{run}/{name}")["Body"].read().decode()
            for name in ("config.yaml", "log.txt")
        },
    }


def _connect_without_token(address: str, work: Path) -> int:
    """The exit status of a driver that connects without the token (nonzero: refused)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env["HOME"] = str(work / "tokenless-home")  # no ~/.ray/auth_token either
    code = f"import ray; ray.init(address={address!r}, log_to_driver=False)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return -1
    # Refused for the token, not for something else.
    refused = "token" in (done.stdout + done.stderr).decode(errors="replace").lower()
    return done.returncode if refused else 0


def _champion(s3, report: dict) -> dict:
    """The champion alias and its model.pt as the bucket holds them, hashed here."""
    import hashlib

    client = s3.client()
    alias = json.loads(
        client.get_object(Bucket=s3.bucket, Key="team/models/mnist/champion.json")["Body"].read()
    )
    model_key = f"team/models/mnist/{alias['version']}/model.pt"
    data = client.get_object(Bucket=s3.bucket, Key=model_key)["Body"].read()
    sidecar = json.loads(
        client.get_object(Bucket=s3.bucket, Key=model_key + ".sha256")["Body"].read()
    )
    return {
        "version": alias["version"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "sidecar": sidecar,
        "size": len(data),
    }


if __name__ == "__main__":
    out = main(Path(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "pipeline")
    print("REPORT " + json.dumps(out, default=str))
