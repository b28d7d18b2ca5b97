"""DDP on a real local Ray (2 CPU workers, gloo): collectives, rank environment, the examples,
resume equivalence, fail-fast launcher errors and cleanup after a worker failure."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import torch
from loguru import logger

from tests.core.distributed_exps import (
    BARRIER_DELAY_S,
    CollectivesExp,
    FailingExp,
    FingerprintedMnistExp,
    MallocExp,
    state_fingerprint,
)
from tests.waiting import eventually as _wait
from tinyexp_core.checkpoint import load_checkpoint
from tinyexp_core.config.exceptions import (
    InsufficientResourcesError,
    RayConnectionError,
    WorkerFailedError,
)
from tinyexp_core.config.factory import build_exp
from tinyexp_core.data import (
    RedisSampleCache,
    image_folder,
    load_source,
    prepare_dataset,
    read_manifest,
)
from tinyexp_core.examples.mnist_exp import Exp as MnistExp
from tinyexp_core.examples.resnet_exp import Exp as ResNetExp
from tinyexp_core.launchers import run_in_process
from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec
from tinyexp_core.launchers.ray_session import _check_reachable
from tinyexp_core.launchers.ray_spec import check_cluster_fits

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER_ACTORS = {"_RankWorker", "_LogSink"}


def _launch(exp, num_workers: int = 2) -> list:
    spec = RayLaunchSpec(num_workers=num_workers, num_cpus_per_worker=1)
    return RayLauncher(spec).run(exp)


def _alive_launcher_actors() -> list[str]:
    """Class names of launcher actors still alive, read from the GCS.

    `ray.util.state.list_actors` needs the dashboard, which the session fixture leaves out
    to start faster; the GCS actor table holds the same states.
    """
    import ray

    return [
        row["ActorClassName"]
        for row in ray._private.state.actors().values()
        if row["State"] == "ALIVE" and row["ActorClassName"] in LAUNCHER_ACTORS
    ]


def _eventually(predicate, timeout_s: float = 15.0) -> bool:
    return _wait(predicate, timeout_s)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- accelerators on 2 gloo ranks


@pytest.fixture(scope="module", params=["cpu", "ddp"])
def collective_results(request, ray_cluster) -> list[dict]:
    """Each accelerator's collectives, run once on 2 Ray ranks; one result per rank."""
    return _launch(build_exp(CollectivesExp, [f"accelerator={request.param}"]))


def test_ray_ranks_tune_malloc_before_training(ray_cluster):
    """Ray runs a rank's `run` in a thread, where untuned glibc malloc faults a conv net's
    activations back in every step (tests/core/test_steady_malloc.py)."""
    results = _launch(MallocExp())
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["steady"] for r in results)


def test_collectives_on_two_gloo_ranks(collective_results):
    r0, r1 = collective_results
    expected_class = {"cpu": "CPUAccelerator", "ddp": "DDPAccelerator"}
    assert r0["class"] == r1["class"] in expected_class.values()
    assert r0["backend"] == r1["backend"] == "gloo"  # no CUDA here: DDP falls back to gloo
    assert [r0["rank"], r1["rank"]] == [0, 1]
    assert [r0["is_main_process"], r1["is_main_process"]] == [True, False]
    for r in (r0, r1):
        assert r["world_size"] == 2
        assert r["reduce_sum"] == [3.0, 30.0]  # (1 + 2), (10 + 20)
        assert r["input_untouched"], "reduce_sum must not modify its input in place"
        assert r["reduce_mean"] == [1.0, 4.0]  # mean(0, 2), mean(4, 4)
        assert r["reduce_mean_int"] == [0.5]  # integer input is averaged as float
        assert r["gather"] == [0, 1, 10, 11]  # concatenated in rank order
        assert r["gather_scalar"] == [0.0, 1.0]
        assert r["initialized_after_destroy"] is False
        assert r["destroyed_twice"] is True
    # Rank 1 reached the barrier BARRIER_DELAY_S late; rank 0 must have waited for it.
    assert r0["barrier_wait_s"] >= 0.5 * BARRIER_DELAY_S
    assert r1["barrier_wait_s"] < r0["barrier_wait_s"]


def test_rank_environment(collective_results):
    r0, r1 = (r["env"] for r in collective_results)
    assert (r0["RANK"], r1["RANK"]) == ("0", "1")
    assert r0["WORLD_SIZE"] == r1["WORLD_SIZE"] == "2"
    assert (r0["LOCAL_RANK"], r1["LOCAL_RANK"]) == ("0", "1")  # one node: local == global
    assert r0["MASTER_ADDR"] == r1["MASTER_ADDR"] == "127.0.0.1"
    assert r0["MASTER_PORT"] == r1["MASTER_PORT"]
    assert 0 < int(r0["MASTER_PORT"]) < 65536
    pids = {r["pid"] for r in collective_results}
    assert len(pids) == 2 and os.getpid() not in pids, "one actor process per rank"


# ---------------------------------------------------------------- the examples on 2 workers


def test_mnist_two_workers_accuracy_and_identical_weights(ray_cluster, digits_prepared, tmp_path):
    exp = build_exp(
        FingerprintedMnistExp,
        [f"output_root={tmp_path}", f"data_cfg.prepared_path={digits_prepared}", "run_id=ddp"],
    )
    r0, r1 = _launch(exp)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["num_epochs"] == exp.train_cfg.num_epochs
    # DDP keeps the replicas in lockstep: bit-identical weights on both ranks at the end.
    assert r0["model_sha256"] == r1["model_sha256"]
    # ...and rank 0 saved exactly those weights.
    last, best = r0["checkpoints"]["last"], r0["checkpoints"]["best"]
    assert state_fingerprint(load_checkpoint(last)["model"]) == r0["model_sha256"]
    report = exp.evaluate(best, "test")
    assert report.split == "test" and report.primary_metric.name == "accuracy"
    assert report.value >= 0.95, report


def test_pi_two_workers(ray_cluster):
    r0, r1 = _launch(build_exp("tinyexp_core.examples.pi_exp:Exp", []))
    assert r0["world_size"] == 2
    assert abs(r0["pi"] - math.pi) < 0.01
    assert r0["pi"] == r1["pi"], "every rank sees the same all-reduced estimate"
    assert r0["num_samples"] == 2 * 1_000_000
    assert len(r0["rank_hits"]) == 2
    assert r0["rank_hits"][0] != r0["rank_hits"][1], "ranks must draw distinct streams"


# ---------------------------------------------------------------- resume equivalence


def _mnist_run(root: Path, prepared: str, *overrides: str) -> dict:
    exp = build_exp(
        MnistExp, [f"output_root={root}", f"data_cfg.prepared_path={prepared}", *overrides]
    )
    return run_in_process(exp).to_dict()


@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory) -> str:
    """512 synthetic 28 x 28 images: equality needs no real data, and it is 3x faster."""
    raw = load_source("synthetic", seed=0, num_samples=512)
    return prepare_dataset(raw, tmp_path_factory.mktemp("synthetic")).path


@pytest.fixture(scope="module")
def uninterrupted_run(small_prepared, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    return _mnist_run(root, small_prepared, "run_id=full", "train_cfg.num_epochs=3")


def _assert_same_model(path_a: str, path_b: str) -> None:
    a, b = load_checkpoint(path_a)["model"], load_checkpoint(path_b)["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between {path_a} and {path_b}"


@pytest.mark.parametrize("resume", ["auto", "path"])
def test_resume_matches_uninterrupted_run(resume, uninterrupted_run, small_prepared, tmp_path):
    first = _mnist_run(tmp_path, small_prepared, "run_id=first", "train_cfg.num_epochs=1")
    if resume == "auto":  # the same run directory, its own last valid checkpoint
        overrides = ["run_id=first", "resume_from=auto"]
    else:  # a new run, started from the first run's last.pt
        overrides = ["run_id=second", f"resume_from={first['checkpoints']['last']}"]
    resumed = _mnist_run(tmp_path, small_prepared, "train_cfg.num_epochs=3", *overrides)

    assert resumed["resumed_from"] == first["checkpoints"]["last"]
    assert resumed["num_epochs"] == 3
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    full = uninterrupted_run
    assert [h["train_loss"] for h in resumed["history"]] == [
        h["train_loss"] for h in full["history"]
    ]
    assert resumed["best_epoch"] == full["best_epoch"]
    _assert_same_model(resumed["checkpoints"]["last"], full["checkpoints"]["last"])
    _assert_same_model(resumed["checkpoints"]["best"], full["checkpoints"]["best"])


# ---------------------------------------------------------------- launcher errors fail fast


def test_too_many_workers_fails_before_anything_starts(ray_cluster):
    pgs_before = set(ray_cluster.util.placement_group_table())
    started = time.perf_counter()
    with pytest.raises(InsufficientResourcesError) as info:
        _launch(CollectivesExp(), num_workers=64)
    assert time.perf_counter() - started < 2.0
    assert info.value.resource == "CPU"
    assert "64 CPU" in str(info.value) and "64 workers" in str(info.value)
    assert set(ray_cluster.util.placement_group_table()) == pgs_before, "nothing reserved"


def test_request_bigger_than_the_cluster_is_refused(ray_cluster):
    # The session cluster has 2 CPUs; no node can host a 3-CPU worker.
    with pytest.raises(InsufficientResourcesError) as info:
        check_cluster_fits(RayLaunchSpec(num_workers=1, num_cpus_per_worker=3))
    assert info.value.resource == "CPU" and info.value.available == 2


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_unreachable_address_is_reported_in_seconds(address):
    started = time.perf_counter()
    with pytest.raises(RayConnectionError) as info:
        _check_reachable(address, timeout_s=3.0)
    assert time.perf_counter() - started < 3.5
    assert info.value.address == address and "127.0.0.1:1" in str(info.value)


_UNREACHABLE_SCRIPT = """
import sys, time
import ray
from tinyexp_core.examples.pi_exp import Exp
from tinyexp_core.config.exceptions import RayConnectionError
from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec

spec = RayLaunchSpec(num_workers=1, address="127.0.0.1:1", connect_timeout_s=3.0)
started = time.perf_counter()
try:
    RayLauncher(spec).run(Exp())
except RayConnectionError as err:
    print(f"elapsed={time.perf_counter() - started:.2f}")
    print(f"ray_initialized={ray.is_initialized()}")
    print(f"error={err}")
    sys.exit(0)
sys.exit(3)
"""


def test_launcher_with_unreachable_address_fails_fast():
    # A fresh process: in this one the session's Ray is initialized and would be reused.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", _UNREACHABLE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert float(out["elapsed"]) < 5.0
    assert out["ray_initialized"] == "False"
    assert "cannot connect to Ray at '127.0.0.1:1'" in out["error"]


# ---------------------------------------------------------------- a failing worker


def test_worker_failure_names_rank_and_cleans_up(ray_cluster):
    ray = ray_cluster
    pgs_before = set(ray.util.placement_group_table())
    launcher = RayLauncher(RayLaunchSpec(num_workers=2, num_cpus_per_worker=1))
    started = time.perf_counter()
    with pytest.raises(WorkerFailedError) as info:
        launcher.run(FailingExp())
    # Rank 0 sleeps 120 s: the launcher must not wait for it once rank 1 has failed.
    assert time.perf_counter() - started < 60
    assert info.value.rank == 1
    assert "ValueError" in info.value.cause and "boom on purpose in rank 1" in info.value.cause
    assert "rank 1" in str(info.value)

    assert _eventually(lambda: not _alive_launcher_actors()), _alive_launcher_actors()
    assert len(launcher.actor_pids) == 2
    assert _eventually(lambda: not any(_pid_alive(p) for p in launcher.actor_pids))
    table = ray.util.placement_group_table()
    new = {pg_id: row["state"] for pg_id, row in table.items() if pg_id not in pgs_before}
    assert len(new) == 1 and set(new.values()) == {"REMOVED"}, new


# ---------------------------------------------------------------- the ResNet example


@pytest.fixture
def color_folder(tmp_path: Path) -> Path:
    """2 classes x 12 PNGs of 16 x 16: reddish vertical stripes vs. bluish horizontal ones."""
    from PIL import Image

    root = tmp_path / "images"
    generator = torch.Generator().manual_seed(0)
    for label, name in enumerate(("blue_rows", "red_cols")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            noise = torch.randint(0, 40, (16, 16, 3), generator=generator, dtype=torch.uint8)
            img = noise.clone()
            stripes = (torch.arange(16) % 4 < 2).to(torch.uint8) * 200
            if label == 0:
                img[:, :, 2] += stripes[:, None].expand(16, 16)
            else:
                img[:, :, 0] += stripes[None, :].expand(16, 16)
            Image.fromarray(img.numpy()).save(root / name / f"{i:02d}.png")
    return root


def test_resnet_example_trains_and_reuses_the_redis_cache(
    color_folder, redis_url, tmp_path, monkeypatch
):
    exp = build_exp(
        ResNetExp,
        [
            f"data_cfg.root={color_folder}",
            "data_cfg.image_size=16",
            "data_cfg.batch_size=8",
            f"data_cfg.cache_url={redis_url}",
            f"data_cfg.data_root={tmp_path / 'data'}",
            "module_cfg.arch=resnet18",
            "module_cfg.num_classes=2",
            "train_cfg.num_epochs=1",
            "launcher=mp",
            f"output_root={tmp_path / 'runs'}",
            "run_id=resnet",
        ],
    )
    namespace = exp.data_cfg.cache_namespace()
    client = redis.Redis.from_url(redis_url)
    cache = RedisSampleCache(client, namespace)
    cache.clear()
    try:
        summary = run_in_process(exp).to_dict()
        assert summary["num_epochs"] == 1 and math.isfinite(summary["final_train_loss"])
        model = load_checkpoint(summary["checkpoints"]["last"])["model"]
        assert tuple(model["conv1.weight"].shape) == (64, 3, 3, 3)  # CIFAR-style stem
        assert tuple(model["fc.weight"].shape) == (2, 512)
        keys = list(client.scan_iter(match=f"tinyexp:cache:{namespace}:*"))
        assert len(keys) == 24 and client.ttl(keys[0]) > 0

        # A second preparation reads every sample from Redis: nothing is decoded again.
        def no_decode(*args):
            raise AssertionError(f"decoded {args[0]} although it is cached")

        monkeypatch.setattr(image_folder, "decode_image", no_decode)
        again = exp.data_cfg.build_prepared_dataset(str(tmp_path / "again"), seed=exp.seed)
        first = read_manifest(exp.data_cfg.prepared_path)
        assert again.data_version == first.data_version  # the same pixels, byte for byte
        assert again.counts == first.counts == {"train": 18, "val": 2, "test": 4}

        report = exp.evaluate(summary["checkpoints"]["best"], "test")
        assert report.split == "test" and 0.0 <= report.value <= 1.0
    finally:
        cache.clear()
        client.close()


def test_resnet_without_cache_url_warns_and_decodes(color_folder, monkeypatch):
    monkeypatch.delenv("TINYEXP_CACHE_URL", raising=False)
    monkeypatch.delenv("TINYEXP_PROGRESS_URL", raising=False)
    exp = build_exp(ResNetExp, [f"data_cfg.root={color_folder}", "data_cfg.image_size=16"])
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    try:
        assert exp.data_cfg.build_sample_cache() is None
    finally:
        logger.remove(sink)
    assert any("TINYEXP_CACHE_URL" in m and "cache_url" in m for m in messages), messages


@pytest.mark.parametrize("arch", ["resnet18", "resnet34"])
def test_resnet_small_image_stem(arch):
    exp = build_exp(ResNetExp, [f"module_cfg.arch={arch}", "module_cfg.num_classes=3"])
    model = exp.module_cfg.build_module(in_channels=3)
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
