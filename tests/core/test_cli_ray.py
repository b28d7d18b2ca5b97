"""`launcher=ray` from the terminal: the CLI starts its own local Ray, trains on 2 workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_mnist_cli_on_two_ray_workers(tmp_path, digits_prepared):
    # No RAY_ADDRESS: the CLI must start (and stop) a local Ray of its own.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyexp_core.examples.mnist_exp",
            "launcher=ray",
            "num_workers=2",
            "train_cfg.num_epochs=1",
            f"output_root={tmp_path}",
            f"data_cfg.prepared_path={digits_prepared}",
            "run_id=cli-ray",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1, proc.stdout
    summary = json.loads(json_lines[0])
    assert summary["world_size"] == 2
    assert summary["num_epochs"] == 1 and summary["run_id"] == "cli-ray"
    assert summary["primary_metric"] == {"name": "accuracy", "direction": "max"}
    assert Path(summary["checkpoints"]["last"]).is_file()
    assert Path(summary["checkpoints"]["last"]).parent.parent == tmp_path / "cli-ray"
    # Rank 0's log lines are streamed back to the terminal (stderr).
    assert "epoch 1/1" in proc.stderr and "world size 2" in proc.stderr
