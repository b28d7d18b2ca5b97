"""The storage root on an S3-compatible server (moto over real HTTP): verified objects, the
preflight's one-line failures, and uploads that fail, retry and recover or give up."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.storage.s3_server import SECRET_KEY, free_port, s3_server
from tinyexp_core import storage
from tinyexp_core.storage import (
    ObjectIncompleteError,
    RetryPolicy,
    StorageUnreachableError,
    Uploader,
    UploadFailedError,
)
from tinyexp_core.storage.store import open_store, reset_stores

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def s3(monkeypatch, tmp_path):
    monkeypatch.setenv(storage.ENV_NODE_CACHE, str(tmp_path / "node-cache"))
    with s3_server(monkeypatch) as server:
        yield server


def _one_line(err: BaseException, root: str) -> str:
    text = str(err)
    assert "\n" not in text
    assert root in text
    assert SECRET_KEY not in text and "AKIA" not in text
    return text


def test_local_root_maps_to_itself_and_uploads_nothing(tmp_path):
    assert storage.localize(tmp_path) == tmp_path
    assert storage.localize(f"file://{tmp_path}") == tmp_path
    assert storage.uploader_for(tmp_path / "x.pt") is None
    assert storage.publish(tmp_path) == []
    storage.check_storage(str(tmp_path))  # no probe for a local root


def test_publish_then_fetch_on_another_node_is_verified(s3, tmp_path, monkeypatch):
    root = f"s3://{s3.bucket}/team"
    storage.check_storage(root)
    src = storage.local_path(f"{root}/runs/r1/checkpoints/last.pt")
    src.parent.mkdir(parents=True)
    src.write_bytes(b"weights" * 1000)
    (published,) = storage.publish(src)
    assert published == f"{root}/runs/r1/checkpoints/last.pt"
    meta = json.loads(
        s3.client()
        .get_object(Bucket=s3.bucket, Key="team/runs/r1/checkpoints/last.pt.sha256")["Body"]
        .read()
    )
    assert meta["size"] == 7000

    monkeypatch.setenv(storage.ENV_NODE_CACHE, str(tmp_path / "other-node"))
    got = storage.localize(f"{root}/runs/r1")  # a folder: every complete object in it
    assert got == tmp_path / "other-node" / "s3" / s3.bucket / "team/runs/r1"
    assert (got / "checkpoints/last.pt").read_bytes() == b"weights" * 1000


def test_half_uploaded_object_is_never_taken(s3, tmp_path):
    root = f"s3://{s3.bucket}/p"
    store = open_store(root)
    # An object without its sidecar: the upload stopped between the two PUTs.
    store.write_bytes(f"{root}/ckpt/step_1.pt", b"half")
    with pytest.raises(ObjectIncompleteError, match="no sha256 sidecar"):
        store.fetch(f"{root}/ckpt/step_1.pt", tmp_path / "x.pt")
    # A sidecar that belongs to other bytes (an overwrite cut short).
    store.write_bytes(f"{root}/ckpt/step_1.pt.sha256", b'{"sha256": "00", "size": 4}')
    with pytest.raises(ObjectIncompleteError, match="sidecar says"):
        store.fetch(f"{root}/ckpt/step_1.pt", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    # A folder fetch leaves out objects without a sidecar.
    store.write_bytes(f"{root}/ckpt/step_2.pt", b"in flight")
    fetched = store.fetch_tree(f"{root}/ckpt", tmp_path / "tree")
    assert not (fetched / "step_2.pt").exists()


def test_endpoint_down_fails_fast_naming_the_uri(monkeypatch):
    port = free_port()  # nothing listens here
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    reset_stores()
    started = time.monotonic()
    with pytest.raises(StorageUnreachableError) as info:
        storage.check_storage("s3://any-bucket/prefix")
    assert time.monotonic() - started < 30
    assert info.value.kind == "unreachable"
    _one_line(info.value, "s3://any-bucket/prefix")


def test_missing_bucket_fails_naming_the_uri(s3):
    root = "s3://no-such-bucket-tinyexp/prefix"
    with pytest.raises(StorageUnreachableError) as info:
        storage.check_storage(root)
    assert info.value.kind == "missing"
    _one_line(info.value, root)


def test_wrong_key_fails_naming_the_uri(s3, monkeypatch):
    import moto.settings

    root = f"s3://{s3.bucket}/p"
    # moto checks keys against its IAM once unauthenticated actions are used up.
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + SECRET_KEY)
    reset_stores()
    with pytest.raises(StorageUnreachableError) as info:
        storage.check_storage(root)
    assert info.value.kind == "credentials"
    text = _one_line(info.value, root)
    assert "wrong-" not in text


def test_upload_failing_then_recovering_is_retried(s3, tmp_path):
    root = f"s3://{s3.bucket}/p"
    src = tmp_path / "last.pt"
    src.write_bytes(b"x" * 4096)
    uploader = Uploader(open_store(root), RetryPolicy(attempts=8, base_delay_s=0.2, max_delay_s=1))
    s3.stop()  # the endpoint goes away, then comes back while the uploader retries
    restart = threading.Timer(1.5, s3.start)
    restart.start()
    uploader.submit(src, f"{root}/runs/r/last.pt")
    uploader.flush(timeout_s=60)
    restart.join()
    assert uploader.uploaded == [f"{root}/runs/r/last.pt"]
    assert open_store(root).remote_sha(f"{root}/runs/r/last.pt")[1] == 4096
    uploader.close()


def test_upload_failing_for_good_names_the_local_file(s3, tmp_path):
    root = f"s3://{s3.bucket}/p"
    src = tmp_path / "step_000000010.pt"
    src.write_bytes(b"y" * 100)
    uploader = Uploader(open_store(root), RetryPolicy(attempts=3, base_delay_s=0.05))
    s3.stop()
    try:
        uploader.submit(src, f"{root}/runs/r/step_000000010.pt")
        with pytest.raises(UploadFailedError) as info:
            uploader.flush(timeout_s=60)
    finally:
        s3.start()
    err = info.value
    assert err.attempts == 3 and err.local_path == str(src)
    assert str(src) in str(err) and "kept on this node's local disk" in str(err)
    assert src.read_bytes() == b"y" * 100  # nothing saved is lost
    with pytest.raises(UploadFailedError):  # the next submit (the next step) fails too
        uploader.submit(src, f"{root}/runs/r/again.pt")
    # Nothing half-published: no sidecar vouches for bytes that never arrived.
    with pytest.raises(ObjectIncompleteError):
        open_store(root).remote_sha(f"{root}/runs/r/step_000000010.pt")
    uploader.shutdown()


def test_an_uploader_dropped_without_close_ends_its_worker(s3, tmp_path):
    import gc

    root = f"s3://{s3.bucket}/p"
    src = tmp_path / "a.pt"
    src.write_bytes(b"a" * 1000)
    uploader = Uploader(open_store(root))
    uploader.submit(src, f"{root}/a.pt")
    uploader.flush(timeout_s=60)
    worker = uploader._worker
    assert worker is not None and worker.poll() is None
    del uploader
    gc.collect()  # nothing else holds it (its result reader only weakly)
    assert worker.wait(timeout=30) == 0


def test_uploads_run_in_their_own_process_and_its_death_fails_them(s3, tmp_path):
    """The client's Python work is not in the training process (no GIL taken from the
    loop); a worker that dies with uploads pending fails them naming the kept file."""
    import os

    import psutil

    root = f"s3://{s3.bucket}/p"
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"a" * 1000)
    second.write_bytes(b"b" * 1000)
    uploader = Uploader(open_store(root), RetryPolicy(attempts=50, base_delay_s=0.2))
    uploader.submit(first, f"{root}/a.pt")
    uploader.flush(timeout_s=60)
    worker = uploader._worker
    assert worker is not None and worker.pid != os.getpid()
    assert "upload_worker" in " ".join(psutil.Process(worker.pid).cmdline())
    s3.stop()  # the next upload retries until its worker is killed
    try:
        uploader.submit(second, f"{root}/b.pt")
        time.sleep(1.0)
        worker.kill()
        with pytest.raises(UploadFailedError) as info:
            uploader.flush(timeout_s=30)
    finally:
        s3.start()
    assert str(second) in str(info.value) and "upload process exited" in str(info.value)
    assert second.read_bytes() == b"b" * 1000  # nothing saved is lost
    assert uploader.uploaded == [f"{root}/a.pt"]


def _state(epoch: int, step: int) -> dict:
    import torch

    return {
        "format": "tinyexp.checkpoint/1",
        "model": {"w": torch.full((64,), float(step))},
        "epoch": epoch,
        "step": step,
    }


def test_checkpoints_upload_in_background_and_resume_on_another_node(s3, tmp_path, monkeypatch):
    from tinyexp_core.checkpoint import CheckpointManager

    run = f"s3://{s3.bucket}/root/runs/r7/checkpoints"
    manager = CheckpointManager(storage.local_path(run))
    assert manager.remote == run
    manager.save(_state(0, 10), is_best=True)
    manager.save_step(_state(1, 15))
    manager.flush_uploads(timeout_s=60)
    store = open_store(run)
    names = sorted(u.rsplit("/", 1)[1] for u in store.list_files(run))
    assert names == sorted(
        n + s
        for n in ("best.pt", "epoch_0000.pt", "last.pt", "step_000000015.pt")
        for s in ("", ".sha256")
    )
    assert not [p for p in manager.directory.iterdir() if p.name.startswith(".upload-")]

    monkeypatch.setenv(storage.ENV_NODE_CACHE, str(tmp_path / "node-b"))  # another node
    other = CheckpointManager(storage.local_path(run))
    assert other.directory != manager.directory and not other.directory.exists()
    path, state = other.latest_valid()
    assert path.startswith(str(tmp_path / "node-b")) and state["step"] == 15
    best_path, best = other.best_valid()
    assert best["step"] == 10


def test_a_local_root_never_opens_a_store(tmp_path, monkeypatch):
    from tinyexp_core.checkpoint import CheckpointManager

    def refuse(*args, **kwargs):
        raise AssertionError("a local root must not reach fsspec")

    monkeypatch.setattr("tinyexp_core.storage.store.open_store", refuse)
    manager = CheckpointManager(tmp_path / "ckpt")
    assert manager.remote == ""
    manager.save(_state(0, 1), is_best=True)
    manager.flush_uploads()
    assert manager.latest_valid()[1]["step"] == 1


def test_io_manager_values_reach_another_host_through_the_bucket(s3, tmp_path, monkeypatch):
    import dagster as dg

    from tinyexp_dagster.resources import StorageResource
    from tinyexp_dagster.resources.io import RunScopedJSONIOManager

    storage_resource = StorageResource(root=f"s3://{s3.bucket}/values-test")

    @dg.asset
    def upstream() -> dict:
        return {"path": "s3://x/y", "n": 3}

    @dg.asset
    def downstream(upstream: dict) -> int:
        return upstream["n"]

    resources = {"io_manager": RunScopedJSONIOManager(storage=storage_resource)}
    with dg.instance_for_test() as instance:
        assert dg.materialize([upstream], resources=resources, instance=instance).success
        monkeypatch.setenv(storage.ENV_NODE_CACHE, str(tmp_path / "other-host"))
        done = dg.materialize(
            [upstream, downstream],
            selection=[downstream],
            resources=resources,
            instance=instance,
        )
        assert done.success and done.output_for_node("downstream") == 3
    assert (tmp_path / "other-host").exists()  # read through this host's own mirror


def test_a_run_whose_uploads_fail_for_good_fails_naming_the_kept_file(s3, tmp_path, monkeypatch):
    """A whole training run (in this process) on an s3:// root whose endpoint goes away
    after the preflight: the run fails with UploadFailedError naming the checkpoint, which
    is still on this node's disk and loads."""
    from tinyexp_core.checkpoint import load_checkpoint
    from tinyexp_core.config.factory import build_exp
    from tinyexp_core.examples.mnist_exp import Exp

    storage.set_uploader(
        Uploader(open_store(f"s3://{s3.bucket}"), RetryPolicy(attempts=3, base_delay_s=0.05))
    )
    root = f"s3://{s3.bucket}/team"
    storage.check_storage(root)
    exp = build_exp(
        Exp,
        [
            f"output_root={root}/runs",
            "train_cfg.num_epochs=1",
            "data_cfg.num_samples=256",
            f"data_cfg.data_root={tmp_path / 'data'}",
            "progress_cfg.enabled=false",
        ],
    )
    s3.stop()
    try:
        with pytest.raises(UploadFailedError) as info:
            exp.run()
    finally:
        s3.start()
        storage.set_uploader(None)
    kept = info.value.local_path
    assert kept.startswith(str(tmp_path / "node-cache")) and kept in str(info.value)
    assert load_checkpoint(kept)["epoch"] == 0  # nothing saved is lost
