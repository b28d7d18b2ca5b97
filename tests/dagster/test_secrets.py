"""A password inside URL-valued overrides of a materialization appears nowhere Dagster or
the run records it: the event log (step logs, rank-0 lines, materializations and their
metadata), the asset values and every file under the storage root, checkpoints included.
Dagster's run record keeps the run config as submitted; a credential that must not be
there belongs in the environment (`TINYEXP_PROGRESS_URL`) or the Redis resource."""

from __future__ import annotations

import socket
from pathlib import Path

import dagster as dg
import torch
from dagster._core.test_utils import instance_for_test
from dagster._serdes import serialize_value

from tests.dagster.support import ASSETS, materializations
from tinyexp_dagster.assets.common import config_hash
from tinyexp_dagster.resources import (
    RayDDPResource,
    RedisProgressResource,
    StallSettingsResource,
    StorageResource,
)

SECRET = "Pa55w0rdXyz"


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _leaks(root: Path) -> list[str]:
    """Files under `root` whose bytes, or (checkpoints) loaded contents, hold SECRET."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if SECRET.encode() in path.read_bytes():
            found.append(str(path))
        if path.suffix == ".pt" and SECRET in repr(torch.load(path, weights_only=True)):
            found.append(f"{path} (loaded)")
    return found


def test_config_hash_ignores_url_credentials() -> None:
    def digest(password: str) -> str:
        return config_hash("pkg.mod:Exp", [f"progress_cfg.url=redis://:{password}@h/0"], "v1")

    assert digest("one") == digest("two") != config_hash("pkg.mod:Exp", ["seed=1"], "v1")


def test_materialization_with_passwords_in_overrides_shows_them_nowhere(
    ray_cluster, redis_url: str, tmp_path: Path
) -> None:
    # Nothing listens on the port: progress is best effort, so training goes on.
    url = f"redis://:{SECRET}@127.0.0.1:{_unused_port()}/0"
    secret_overrides = [f"progress_cfg.url={url}"]
    storage_root = tmp_path / "storage"
    resources = {
        "ray": RayDDPResource(num_workers=1, num_cpus_per_worker=1),
        "redis": RedisProgressResource(url=redis_url),
        "storage": StorageResource(root=str(storage_root)),
        "stalls": StallSettingsResource(),
    }
    small_data = ["data_cfg.source=synthetic", "data_cfg.num_samples=64"]
    run_config = {
        "ops": {
            "mnist__prepared_dataset": {"config": {"overrides": [*small_data, *secret_overrides]}},
            "mnist__trained_model": {
                "config": {"overrides": ["train_cfg.num_epochs=1", *secret_overrides]}
            },
        }
    }
    with instance_for_test() as instance:
        result = dg.materialize(
            ASSETS,
            selection=[
                dg.AssetKey(["mnist", "prepared_dataset"]),
                dg.AssetKey(["mnist", "trained_model"]),
            ],
            instance=instance,
            resources=resources,
            run_config=run_config,
        )
        assert result.success
        meta = materializations(result)["trained_model"].metadata
        assert meta["overrides"].value == [
            "train_cfg.num_epochs=1",
            f"progress_cfg.url={url.replace(SECRET, '***')}",
        ]
        effective = meta["effective_config"].value
        assert effective["progress_cfg"]["url"] == url.replace(SECRET, "***")
        value = result.output_for_node("mnist__trained_model")
        assert SECRET not in repr(value)
        assert f"progress_cfg.url={url.replace(SECRET, '***')}" in value["overrides"]

        records = instance.all_logs(result.run_id)
        assert any(r.dagster_event and r.dagster_event.is_step_materialization for r in records)
        assert any("epoch 1/1" in r.user_message for r in records), "rank-0 lines are logged"
        leaked = [serialize_value(r) for r in records if SECRET in serialize_value(r)]
        assert leaked == []
        # The instance's files (event log, IO-manager values) too; only the run record
        # (`runs.db`) holds the launch config as it was submitted, which is Dagster's copy.
        instance_root = Path(instance.root_directory)
        assert [p for p in _leaks(instance_root) if not p.endswith("runs.db")] == []
    assert list((storage_root / "runs").rglob("checkpoints/*.pt"))
    assert _leaks(storage_root) == []
