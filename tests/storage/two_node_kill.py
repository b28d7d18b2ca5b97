"""Must-show 2, run by `two_node_pipeline.py kill`: the rank on node B is SIGKILLed inside
epoch 1, node B is removed and node C (an empty node cache) joins; Dagster's retry resumes
from the step checkpoint in the bucket, and the final weights equal those of a run that was
never interrupted."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

BASE = [
    "train_cfg.num_epochs=2",
    "checkpoint_cfg.every_n_steps=4",
    "seed=3",
    "train_cfg.step_delay_s=0.1",  # slow enough for the kill to land inside epoch 1
]
KILL_AFTER = "checkpoints/step_000000024.pt.sha256"  # global step 24: epoch 1, step 4 of it


class _KillOnNodeB:
    """`on_started` of the first attempt: wait for the step checkpoint of global step 24 in
    the bucket, SIGKILL the rank placed on node B, swap node B for node C."""

    def __init__(self, cluster: Any, node_b: Any, work: Path, s3: Any) -> None:
        self.cluster, self.node_b, self.work, self.s3 = cluster, node_b, work, s3
        self.report: dict[str, Any] = {}
        self.thread: threading.Thread | None = None

    def __call__(self, launcher: Any) -> None:
        if self.thread is not None:
            return  # the retry runs untouched
        import ray

        nodes = ray.get([a.node_id.remote() for a in launcher.actors], timeout=30)
        rank = nodes.index(self.node_b.node_id)
        self.report["ranks_on_nodes"] = len(set(nodes))
        self.thread = threading.Thread(
            target=self._kill, args=(rank, launcher.actor_pids[rank]), daemon=True
        )
        self.thread.start()

    def _start_node_c(self) -> None:
        """Node C joins while attempt 1 runs (its ranks are placed already), by `ray start`
        in a process of its own: a Ray node cannot start from a thread of this one."""
        import json
        import subprocess
        import sys

        (self.work / "node_c" / "tmp").mkdir(parents=True)
        env = {
            **os.environ,
            "TINYEXP_NODE_CACHE": str(self.work / "node_c" / "cache"),
            "TMPDIR": str(self.work / "node_c" / "tmp"),
        }
        ray_cli = Path(sys.executable).with_name("ray")
        self.node_c = subprocess.Popen(
            [
                str(ray_cli),
                "start",
                "--block",
                f"--address={self.cluster.address}",
                "--num-cpus=1",
                f"--resources={json.dumps({'node_c': 1})}",
                "--object-store-memory=134217728",
                "--disable-usage-stats",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_node_c(self) -> None:
        node_c = getattr(self, "node_c", None)
        if node_c is not None and node_c.poll() is None:
            node_c.terminate()  # `ray start --block` stops its node's processes on SIGTERM
            node_c.wait(timeout=30)

    def _node_c_alive(self) -> bool:
        import ray

        return any(n["Alive"] and "node_c" in n["Resources"] for n in ray.nodes())

    def _kill(self, rank: int, pid: int) -> None:
        self._start_node_c()
        client = self.s3.client()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listed = client.list_objects_v2(Bucket=self.s3.bucket, Prefix="team/runs/")
            if any(o["Key"].endswith(KILL_AFTER) for o in listed.get("Contents", [])):
                break
            time.sleep(0.05)
        else:
            self.report["error"] = f"no {KILL_AFTER} in the bucket after 120 s"
            return
        os.kill(pid, signal.SIGKILL)
        self.report["killed_rank"] = rank
        self.cluster.remove_node(self.node_b)
        while time.monotonic() < deadline and not self._node_c_alive():
            time.sleep(0.1)
        self.report["node_c_alive"] = self._node_c_alive()


def _weights(s3: Any, run_id: str) -> dict:
    import torch

    body = (
        s3.client()
        .get_object(Bucket=s3.bucket, Key=f"team/runs/{run_id}/checkpoints/last.pt")["Body"]
        .read()
    )
    return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)


def _compare(ours: dict, theirs: dict, cache_c: Path) -> dict:
    import torch

    different = [k for k in ours["model"] if not torch.equal(ours["model"][k], theirs["model"][k])]
    files = sorted(p.relative_to(cache_c).as_posix() for p in cache_c.rglob("*.pt"))
    return {"different": different, "step": [ours["step"], theirs["step"]], "node_c_files": files}


def run_kill(work: Path, redis_url: str, s3: Any, mp: Any, make_cluster: Any) -> dict:
    import dagster as dg
    from dagster._core.test_utils import instance_for_test

    from tests.dagster.support import ASSETS, key
    from tinyexp_dagster.resources import (
        RayDDPResource,
        RedisProgressResource,
        StallSettingsResource,
        StorageResource,
    )

    cluster = make_cluster(work)
    (node_b,) = list(cluster.worker_nodes)
    mp.setenv("TINYEXP_NODE_CACHE", str(work / "driver" / "cache"))
    hook = _KillOnNodeB(cluster, node_b, work, s3)

    class HookedRay(RayDDPResource):
        def run(self, exp: Any, spec: Any, *, on_started=None, **kwargs: Any) -> list[Any]:
            return super().run(exp, spec, on_started=hook, **kwargs)

    resources = {
        "ray": HookedRay(address=cluster.address, num_workers=2, num_cpus_per_worker=1),
        "redis": RedisProgressResource(url=redis_url),
        "storage": StorageResource(root=f"s3://{s3.bucket}/team"),
        "stalls": StallSettingsResource(),
    }
    selection = [key("prepared_dataset"), key("trained_model")]
    config = {"ops": {"mnist__trained_model": {"config": {"overrides": BASE}}}}
    report: dict[str, Any] = {}
    try:
        with instance_for_test() as instance:
            killed = dg.materialize(
                ASSETS,
                selection=selection,
                instance=instance,
                resources=resources,
                run_config=config,
            )
            if hook.thread is not None:
                hook.thread.join(timeout=60)
            report |= hook.report
            report["killed_success"] = killed.success
            trained = killed.output_for_node("mnist__trained_model")
            report["resumed_from"] = trained["resumed_from"]
            report["history"] = [r["epoch"] for r in trained["history"]]
            full = dg.materialize(
                ASSETS,
                selection=selection,
                instance=instance,
                resources=resources,
                run_config=config,
            )
            report["full_success"] = full.success
            ours, theirs = _weights(s3, killed.run_id), _weights(s3, full.run_id)
        report |= _compare(ours, theirs, work / "node_c" / "cache")
    finally:
        hook.stop_node_c()
        cluster.shutdown()
    return report
