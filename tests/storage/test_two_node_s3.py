"""The whole pipeline with the storage root in an S3-compatible server (moto, real HTTP) and
the two ranks on two Ray nodes, each with its own node cache: nothing is shared but the
bucket (`two_node_pipeline.py` runs it in a process of its own, apart from the session's Ray).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def _run(work: Path, redis_url: str, mode: str = "pipeline") -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    for name in list(env):
        if name.startswith(("AWS_", "RAY_ADDRESS", "RAY_AUTH", "TINYEXP_NODE_CACHE")):
            del env[name]
    done = subprocess.run(
        [sys.executable, "-m", "tests.storage.two_node_pipeline", str(work), redis_url, mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stdout[-4000:] + done.stderr[-8000:]
    return json.loads(lines[-1][len("REPORT ") :]) | {"log": done.stdout + done.stderr}


def test_pipeline_on_two_nodes_with_the_storage_root_in_s3(tmp_path: Path, redis_url: str):
    report = _run(tmp_path, redis_url)
    assert report["success"], "the pipeline failed"
    run_id = report["trained"]["run_id"]
    root, trained = report["root"], report["trained"]
    # The ranks were told URIs, and said URIs back.
    assert trained["config"]["output_root"] == f"{root}/runs"
    assert trained["config"]["data_cfg"]["prepared_path"].startswith(f"{root}/datasets/")
    assert trained["checkpoints"]["best"] == f"{root}/runs/{run_id}/checkpoints/best.pt"
    assert trained["world_size"] == 2
    assert report["tokenless_rc"] != 0  # the cluster really asks for the token

    # Each node read the dataset from the bucket into its own cache: the driver's copy was
    # deleted before training, so no rank could have read it.
    bucket = report["bucket"]
    for node in ("node_a", "node_b"):
        files = report["node_files"][node]
        assert any(f.endswith("/train.pt") for f in files), (node, files)
        assert all(f.startswith(f"s3/{bucket}/team/") for f in files)
    # Rank 0 wrote its checkpoints on its own node; the driver never held them (promotion
    # fetched best.pt alone from the bucket).
    rank0 = [
        n
        for n in ("node_a", "node_b")
        if any("epoch_0000.pt" in f for f in report["node_files"][n])
    ]
    assert len(rank0) == 1
    driver_runs = [f for f in report["driver_files"] if f.startswith("runs/")]
    assert driver_runs == [
        f"runs/{run_id}/checkpoints/best.pt",
        f"runs/{run_id}/checkpoints/best.pt.sha256",
        f"runs/{run_id}/learning_curves.svg",  # drawn by the driver, then uploaded
    ]

    objects = set(report["objects"])
    for name in ("last.pt", "best.pt", "epoch_0000.pt"):
        assert f"team/runs/{run_id}/checkpoints/{name}" in objects
        assert f"team/runs/{run_id}/checkpoints/{name}.sha256" in objects
    assert f"team/runs/{run_id}/config.yaml" in objects
    assert f"team/runs/{run_id}/learning_curves.svg" in objects
    assert "team/models/mnist/champion.json" in objects

    # The champion's model.pt in the bucket, hashed from the bucket's bytes, is what its
    # sidecar and the registered version say.
    champion = report["champion"]
    assert champion["version"] == run_id
    assert champion["sha256"] == champion["sidecar"]["sha256"] == report["checkpoint"]["sha256"]
    assert champion["size"] == champion["sidecar"]["size"]
    assert report["checks"] == {
        "champion_gate": True,
        "checkpoint_integrity": True,
        "minimum_metric": True,
    }
    # No credential in the step logs or in the records the run left in the bucket.
    from tests.storage.s3_server import ACCESS_KEY, SECRET_KEY
    from tests.storage.two_node_pipeline import RAY_TOKEN

    for text in (report["log"], *report["records"].values()):
        assert SECRET_KEY not in text and ACCESS_KEY not in text and RAY_TOKEN not in text
    assert "effective config" in report["records"]["log.txt"]


@pytest.mark.slow
def test_rank_killed_on_node_b_resumes_from_the_bucket_on_another_node(
    tmp_path: Path, redis_url: str
):
    """The rank on node B is SIGKILLed inside epoch 1 (after the step checkpoint of global
    step 24 is in the bucket); node B goes, node C (empty cache) comes; Dagster's retry
    resumes from the bucket's step checkpoint and ends with the weights (torch.equal) of a
    run that was never interrupted."""
    report = _run(tmp_path, redis_url, "kill")
    assert "error" not in report, report.get("error")
    assert report["ranks_on_nodes"] == 2 and report["node_c_alive"]
    assert report["killed_success"] and report["full_success"]
    # last.pt (or the newest valid step file) of the run, in the bucket: a step checkpoint
    # written inside epoch 1, since the kill came after global step 24.
    assert report["resumed_from"].startswith("s3://")
    assert "/checkpoints/" in report["resumed_from"]
    import re

    resumed = re.findall(r"resumed from (\S+) at epoch 1, step (\d+) of it", report["log"])
    assert resumed and int(resumed[0][1]) > 0, "the retry did not resume inside epoch 1"
    node_caches = (str(tmp_path / "node_a" / "cache"), str(tmp_path / "node_c" / "cache"))
    assert resumed[0][0].startswith(node_caches)  # rank 0's own node cache, not node B's
    assert report["history"] == [0, 1]
    # Node C had nothing: what the retry's rank there resumed from came from the bucket.
    assert any("/checkpoints/" in f for f in report["node_c_files"])
    assert report["step"][0] == report["step"][1]
    assert report["different"] == [], f"tensors differ after the resume: {report['different']}"
