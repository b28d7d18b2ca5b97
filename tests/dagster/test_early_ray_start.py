"""A run that trains on the default local Ray starts that Ray when the run starts (issue 24,
"Ray start overlaps dataset preparation"): `RayDDPResource.setup_for_execution` spawns the
storage root's head in the background, once per run, through `ray_head.spawn_head` (the
locked path), and the training step waits for it through `ensure_head`. Nothing starts for
an address, `local`, a process already on a Ray, a resource without `storage`, or a run
without a training step; a failed early start leaves the training step's own start to run
and report. No real Ray here: the head's start is replaced by fakes."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import dagster as dg
import pytest

from tinyexp_core.config.exceptions import ConfigValueError, RayConnectionError
from tinyexp_core.services import ray_head
from tinyexp_dagster.resources import RayDDPResource, StorageResource

HOLDER_PID = 4242
HEAD = ray_head.RayHead("127.0.0.1:1", HOLDER_PID)


class FakeStart:
    """`spawn_head` and `ensure_head` of a head that starts without Ray."""

    def __init__(self, spawn_error: Exception | None = None) -> None:
        self.spawns: list[tuple[str, float | None]] = []
        self.ensures: list[str] = []
        self.spawned = threading.Event()
        self.spawn_error = spawn_error
        self.ensure_error: Exception | None = None

    def spawn_head(self, root, *, idle_stop_after_s=None, **_):
        self.spawns.append((str(root), idle_stop_after_s))
        self.spawned.set()
        if self.spawn_error is not None:
            raise self.spawn_error
        return None, HOLDER_PID, True

    def ensure_head(self, root):
        self.ensures.append(str(root))
        if self.ensure_error is not None:
            raise self.ensure_error
        # Started now when the early start failed; else the holder spawned early is found.
        return HEAD, self.spawn_error is not None


@pytest.fixture
def fake(monkeypatch):
    ray = sys.modules.get("ray")
    if ray is not None:  # this process as a fresh run process: on no Ray yet
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(ray_head.ENV_IDLE_STOP_S, raising=False)
    start = FakeStart()
    monkeypatch.setattr(ray_head, "spawn_head", start.spawn_head)
    monkeypatch.setattr(ray_head, "ensure_head", start.ensure_head)
    return start


def toy_job(root: Path, fake: FakeStart, trainers: int = 1) -> tuple[list, dict]:
    """A dataset asset (it records whether the head's start had begun) and `trainers`
    training assets that each ask the resource for the address."""
    seen: dict = {"logs": [], "addresses": []}

    @dg.asset
    def dataset() -> int:
        seen["start_begun"] = fake.spawned.wait(10)
        return 1

    def trainer(name: str) -> dg.AssetsDefinition:
        @dg.asset(name=name)
        def train(dataset: int, ray: RayDDPResource, storage: StorageResource) -> int:
            log: list[str] = []
            seen["addresses"].append(ray.run_address(str(storage.resolved_root()), log.append))
            seen["logs"].append(log)
            return dataset

        return train

    return [dataset, *(trainer(f"train{i}") for i in range(trainers))], seen


def resources(root: Path, **ray: object) -> dict:
    storage = StorageResource(root=str(root))
    return {"ray": RayDDPResource(storage=storage, **ray), "storage": storage}


def test_a_run_that_trains_starts_the_local_ray_once_when_it_starts(tmp_path, fake):
    root = tmp_path / "root"
    assets, seen = toy_job(root, fake, trainers=2)
    assert dg.materialize(assets, resources=resources(root)).success
    assert seen["start_begun"], "the head's start had not begun while the dataset step ran"
    assert fake.spawns == [(str(root.resolve()), 600.0)], "one start per run, warm settings"
    assert (root / "ray" / "claim").exists(), "claimed for the run: not idle"
    assert seen["addresses"] == [HEAD.address] * 2 and len(fake.ensures) == 2
    first, second = seen["logs"]
    assert "started the local Ray at 127.0.0.1:1 for" in first[-1]
    assert "when the run started" in first[-1]
    assert "warm start: reusing the local Ray at 127.0.0.1:1" in second[-1]


@pytest.mark.parametrize("case", ["local", "address", "env", "connected", "no_storage"])
def test_nothing_starts_early_off_the_default_local_ray(tmp_path, fake, monkeypatch, case):
    root = tmp_path / "root"
    assets, seen = toy_job(root, fake)
    res = resources(root, address={"local": "local", "address": "ray://10.0.0.1:10001"}.get(case))
    if case == "env":
        monkeypatch.setenv("RAY_ADDRESS", "auto")
    if case == "connected":
        import ray

        monkeypatch.setattr(ray, "is_initialized", lambda: True)
    if case == "no_storage":
        res["ray"] = RayDDPResource()
    fake.spawned.set()  # the dataset step does not wait for a start that never comes
    assert dg.materialize(assets, resources=res).success
    assert fake.spawns == []
    if case == "no_storage":  # the training step starts it, as before
        assert fake.ensures == [str(root.resolve())] and seen["addresses"] == [HEAD.address]
    else:
        assert fake.ensures == []


def test_a_run_without_a_training_step_starts_nothing(tmp_path, fake):
    root = tmp_path / "root"
    assets, _ = toy_job(root, fake)
    fake.spawned.set()
    assert dg.materialize(assets, selection=[assets[0]], resources=resources(root)).success
    assert fake.spawns == [] and not (root / "ray").exists()


def early_resource(root: Path) -> RayDDPResource:
    """The resource as a run that trains has it after setup (the early start begun)."""
    res = RayDDPResource(storage=StorageResource(root=str(root)))
    res.setup_for_execution(dg.build_init_resource_context())
    return res


def test_a_failed_early_start_falls_back_to_the_training_steps_start(tmp_path, fake):
    fake.spawn_error = OSError("fork failed")
    log: list[str] = []
    res = early_resource(tmp_path / "root")
    assert res.run_address(str(tmp_path / "root"), log.append) == HEAD.address
    assert len(fake.spawns) == 1 and fake.ensures == [str(tmp_path / "root")]
    assert "when the run started failed (OSError: fork failed); starting it now" in log[0]
    assert "started the local Ray at 127.0.0.1:1" in log[-1]
    assert "when the run started" not in log[-1]


def test_the_training_steps_start_reports_its_error_as_before(tmp_path, fake):
    fake.spawn_error = OSError("fork failed")
    fake.ensure_error = RayConnectionError("local", "the Ray head exited: no space left")
    res = early_resource(tmp_path / "root")
    with pytest.raises(RayConnectionError, match="the Ray head exited: no space left"):
        res.run_address(str(tmp_path / "root"))


def test_a_bad_idle_stop_starts_nothing_early_and_fails_the_training_step(tmp_path, monkeypatch):
    """No fakes: the early start refuses the setting, starts nothing; the training step's own
    start raises the same typed error as without an early start."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray = sys.modules.get("ray")
    if ray is not None:
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv(ray_head.ENV_IDLE_STOP_S, "soon")
    root = tmp_path / "root"
    log: list[str] = []
    res = early_resource(root)
    with pytest.raises(ConfigValueError, match=rf"{ray_head.ENV_IDLE_STOP_S}.*soon"):
        res.run_address(str(root), log.append)
    assert "when the run started failed (ConfigValueError" in log[0]
    assert ray_head.read_head(root) is None and not (root / "ray" / "starting").exists()


def test_an_early_start_for_another_root_is_not_taken_for_this_runs(tmp_path, fake):
    res = early_resource(tmp_path / "a")
    log: list[str] = []
    assert res.run_address(str(tmp_path / "b"), log.append) == HEAD.address
    assert f"{(tmp_path / 'a').resolve()}'s, not {tmp_path / 'b'}'s" in log[0]
    assert "warm start" in log[-1], "the head found is not reported as this run's start"
    assert fake.ensures == [str(tmp_path / "b")]
