"""Item 6: two training runs at once (different configs) do not interfere: each has its own
rendezvous port, progress key, run directory and promoted checkpoint.

Two `dagster job execute` processes run `mnist_training_pipeline` against one DAGSTER_HOME, one
storage root and one Redis, both on the session's Ray (RAY_ADDRESS): 2 ranks x 0.5 CPU
each, so both jobs fit on its 2 CPUs at the same time. Both promote under one model name,
the case where one run could overwrite the other's file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.reliability.exps import read_trace
from tests.reliability.support import REPO_ROOT, materialization_metadata, redis_client
from tests.reliability.support import train_config as _train_config
from tinyexp_core.checkpoint import sha256_file, verify_checkpoint
from tinyexp_core.progress import ACTIVE_RUNS_KEY, read_run

CONFIGS = {
    "a": ["train_cfg.num_epochs=3", "optimizer_cfg.lr=0.001", "seed=0"],
    "b": ["train_cfg.num_epochs=3", "optimizer_cfg.lr=0.002", "seed=1"],
}


def _config_file(tmp_path: Path, name: str) -> Path:
    config = _train_config(CONFIGS[name], num_workers=2, num_cpus_per_worker=0.5)
    config["ops"]["mnist__model_checkpoint"] = {"config": {"model_name": "shared_name"}}
    path = tmp_path / f"run-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(600)
def test_two_concurrent_runs_do_not_interfere(ray_cluster, redis_url, storage, instance, tmp_path):
    env = {
        **os.environ,
        "DAGSTER_HOME": instance.root_directory,
        "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address,
        "TINYEXP_STORAGE_ROOT": str(storage),
        "TINYEXP_REDIS_URL": redis_url,
        "PYTHONPATH": str(REPO_ROOT),  # the test experiment lives in tests/
    }
    dagster = str(Path(sys.executable).with_name("dagster"))
    procs = {
        name: subprocess.Popen(
            [dagster, "job", "execute", "-m", "tests.reliability.location"]
            + ["-j", "mnist_training_pipeline", "-c", str(_config_file(tmp_path, name))],
            cwd=REPO_ROOT,
            env=env,
            stdout=open(tmp_path / f"run-{name}.log", "wb"),
            stderr=subprocess.STDOUT,
        )
        for name in CONFIGS
    }
    for name, proc in procs.items():
        code = proc.wait(timeout=540)
        assert code == 0, (tmp_path / f"run-{name}.log").read_text()[-4000:]

    runs = instance.get_runs()
    assert len(runs) == 2 and all(r.is_success for r in runs), [r.status for r in runs]
    by_name = {}
    for run in runs:
        trained = materialization_metadata(instance, run.run_id, "trained_model")
        lr = trained["effective_config"]["optimizer_cfg"]["lr"]
        by_name["a" if lr == 0.001 else "b"] = (run.run_id, trained)
    assert set(by_name) == {"a", "b"}
    (id_a, meta_a), (id_b, meta_b) = by_name["a"], by_name["b"]

    # Separate run directories and rendezvous ports; the training really overlapped.
    trace_a, trace_b = read_trace(storage / "runs" / id_a), read_trace(storage / "runs" / id_b)
    assert [t["epoch"] for t in trace_a] == [t["epoch"] for t in trace_b] == [0, 1, 2]
    assert {t["progress_run_id"] for t in trace_a} == {id_a}
    assert {t["progress_run_id"] for t in trace_b} == {id_b}
    assert trace_a[0]["world_size"] == trace_b[0]["world_size"] == 2
    assert trace_a[0]["master_port"] != trace_b[0]["master_port"]
    overlap = min(trace_a[-1]["ended"], trace_b[-1]["ended"]) - max(
        trace_a[0]["started"], trace_b[0]["started"]
    )
    assert overlap > 0, "the two runs did not train at the same time"
    assert meta_a["run_dir"] != meta_b["run_dir"]

    # Separate progress keys, both finished; nothing left in the active set.
    client = redis_client(redis_url)
    try:
        for run_id in (id_a, id_b):
            progress = read_run(client, run_id)
            assert progress["status"] == "succeeded", progress
            assert progress["num_epochs"] == "3" and progress["world_size"] == "2"
            assert progress["last_checkpoint"].startswith(str(storage / "runs" / run_id))
            assert not client.sismember(ACTIVE_RUNS_KEY, run_id)
    finally:
        client.close()

    # Promotion: nothing was overwritten, and every promoted file holds exactly the best.pt
    # of the run its version folder names.
    models = storage / "models" / "shared_name"
    versions = sorted(p.name for p in models.iterdir() if p.is_dir())
    assert versions and set(versions) <= {id_a, id_b}, versions
    for version in versions:
        best = storage / "runs" / version / "checkpoints" / "best.pt"
        assert verify_checkpoint(models / version / "model.pt") == sha256_file(best)
    # Each run promotes its own model (asset values are kept per producing run).
    sources = {
        run_id: materialization_metadata(instance, run_id, "model_checkpoint")["source_run"]
        for run_id in (id_a, id_b)
    }
    assert sources == {id_a: id_a, id_b: id_b}
    assert versions == sorted([id_a, id_b])
    # both gates ran under the alias lock: two moves logged, the champion one of the two
    # (this location's tolerance lets every version in: tests/reliability/support.py)
    history = [json.loads(line) for line in (models / "champion_history.jsonl").open()]
    assert sorted(m["version"] for m in history) == sorted([id_a, id_b])
    # One decision at a time: the second gate compared against the champion the first one
    # had just made, and its entry says so.
    assert history[0]["previous"] is None, history
    assert history[1]["previous"] == history[0]["version"], history
    assert json.loads((models / "champion.json").read_text())["version"] == history[-1]["version"]
