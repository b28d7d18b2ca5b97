"""`wandb_cfg.enable_wandb=true`: config, epoch rows and final metrics reach an offline W&B run."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hooks import stopping_after_step
from tinyexp_core import checkpoint as ckpt
from tinyexp_core.config.exceptions import RunStoppedError
from tinyexp_core.config.factory import build_exp
from tinyexp_core.examples.mnist_exp import Exp as MnistExp
from tinyexp_core.training.stop import clear_stop

# The .wandb transaction log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
# LevelDB-log framing in 32 KiB blocks (record header: crc32, length, type), each record
# a serialized wandb.proto Record.
_HEADER = struct.Struct("<4sHB")
_RECORD = struct.Struct("<IHB")
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    ident, magic, version = _HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    pos = _HEADER.size
    while pos + _RECORD.size <= len(data):
        if _BLOCK - pos % _BLOCK < _RECORD.size:  # the block's tail is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = _RECORD.unpack_from(data, pos)
        if kind == 0 and length == 0:
            break
        start = pos + _RECORD.size
        yield kind, data[start : start + length]
        pos = start + length


def read_wandb_records(path: Path) -> list:
    """Every Record in a .wandb file, decoded with wandb's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    records, pending = [], b""
    for kind, payload in _chunks(path.read_bytes()):
        pending = payload if kind in (_FULL, _FIRST) else pending + payload
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _items(items) -> dict:
    """Protobuf key/value items as a dict (W&B writes `key` or a one-part `nested_key`)."""
    return {(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in items}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Point W&B at a local listener and count connections: offline must make none."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield accepted
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()


def test_enable_wandb_records_config_epochs_and_final_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list
) -> None:
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    exp = build_exp(
        "tinyexp_core.examples.mnist_exp:Exp",
        [
            "wandb_cfg.enable_wandb=true",
            f"output_root={tmp_path / 'runs'}",
            "run_id=wandb-test",
            f"data_cfg.data_root={tmp_path / 'data'}",
            "data_cfg.source=synthetic",
            "data_cfg.num_samples=96",
            "train_cfg.num_epochs=2",
        ],
    )
    result = exp.run()
    summary = result.to_dict()

    run_dir = Path(result.run_dir)
    wandb_dir = Path(result.tracker["wandb_dir"])
    assert wandb_dir.parent == run_dir / "wandb"  # <run_dir>/wandb/offline-run-<time>-<id>
    assert wandb_dir.name.startswith("offline-run-")
    records = read_wandb_records(wandb_dir / f"run-{result.tracker['wandb_run_id']}.wandb")
    by_type: dict[str, list] = {}
    for record in records:
        by_type.setdefault(record.WhichOneof("record_type"), []).append(record)

    assert by_type["run"][0].run.run_id == result.tracker["wandb_run_id"]
    config = {i.key: json.loads(i.value_json) for i in by_type["run"][0].run.config.update}
    assert config["wandb_cfg"]["enable_wandb"] is True
    assert config["train_cfg"]["num_epochs"] == 2

    rows = [_items(r.history.item) for r in by_type["history"]]
    expected_rows = [record.to_row() for record in result.history]
    assert len(rows) == len(expected_rows) == 2
    for row, expected in zip(rows, expected_rows, strict=True):
        assert row["_step"] == expected["step"]  # the global optimizer step
        for key in ("epoch", "train_loss", "val_loss", "val_accuracy", "lr"):
            assert row[key] == pytest.approx(expected[key]), key

    final: dict = {}
    for record in by_type["summary"]:
        final.update(_items(record.summary.update))
    assert final["best_value"] == pytest.approx(result.best_value)
    assert final["final_train_loss"] == pytest.approx(summary["final_train_loss"])
    assert no_network == []  # offline: not one connection to the W&B server address


def test_wandb_off_by_default_leaves_no_trace(tmp_path: Path) -> None:
    exp = build_exp(
        "tinyexp_core.examples.mnist_exp:Exp",
        [
            f"output_root={tmp_path / 'runs'}",
            f"data_cfg.data_root={tmp_path / 'data'}",
            "data_cfg.source=synthetic",
            "data_cfg.num_samples=96",
            "train_cfg.num_epochs=1",
        ],
    )
    result = exp.run()
    assert result.tracker == {}
    assert not (Path(result.run_dir) / "wandb").exists()


@dataclass(repr=False)
class StopAtStepExp(MnistExp):
    """The MNIST example that asks itself to stop after global step `stop_at_step`, the way
    a SIGTERM handler or a Ray launcher would (`request_stop`)."""

    stop_at_step: int = 0

    def train(self):
        with stopping_after_step(self.stop_at_step):
            return super().train()


def _history_steps(path: Path) -> list[int]:
    return [
        int(_items(r.history.item)["_step"])
        for r in read_wandb_records(path)
        if r.WhichOneof("record_type") == "history"
    ]


def test_a_resumed_run_continues_the_same_wandb_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list
) -> None:
    """Stopped mid-epoch 1 (step checkpoint), resumed with resume_from=auto: the W&B run id
    comes from the checkpoint, and every row the resumed run logs is after its step."""
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    args = [
        "wandb_cfg.enable_wandb=true",
        f"output_root={tmp_path / 'runs'}",
        "run_id=wandb-resume",
        f"data_cfg.data_root={tmp_path / 'data'}",
        "data_cfg.source=synthetic",
        "data_cfg.num_samples=96",
        "data_cfg.batch_size=8",
        "train_cfg.num_epochs=2",
    ]
    exp = build_exp(f"{__name__}:StopAtStepExp", [*args, "stop_at_step=13"])
    try:
        with pytest.raises(RunStoppedError) as stopped:
            exp.run()
    finally:
        clear_stop()
    stop_ckpt = ckpt.load_checkpoint(stopped.value.checkpoint)
    position = stop_ckpt["position"]
    assert position["epoch"] == 1 and 0 < position["step_in_epoch"] < position["num_steps"]
    assert stop_ckpt["step"] == 13
    first_id = stop_ckpt["extra"]["tracker"]["wandb_run_id"]
    # the epoch checkpoint of epoch 0 names the same run
    epoch0 = ckpt.load_checkpoint(Path(exp.get_run_dir()) / "checkpoints" / "epoch_0000.pt")
    assert epoch0["extra"]["tracker"] == {"wandb_run_id": first_id}

    resumed = build_exp(f"{__name__}:StopAtStepExp", [*args, "resume_from=auto"]).run()
    assert resumed.resumed_from.endswith("last.pt")
    assert resumed.tracker["wandb_run_id"] == first_id

    folders = sorted((Path(resumed.run_dir) / "wandb").glob("offline-run-*"))
    assert len(folders) == 2, folders  # one per process that ran, one W&B run id
    before, after = (_history_steps(f / f"run-{first_id}.wandb") for f in folders)
    num_steps = position["num_steps"]
    assert before == [num_steps]  # epoch 0's row, logged before the stop
    assert after == [2 * num_steps]  # epoch 1's row, after the resume
    assert min(after) > stop_ckpt["step"] and min(after) > max(before)
    final = ckpt.load_checkpoint(resumed.checkpoints.last)
    assert final["extra"]["tracker"] == {"wandb_run_id": first_id}
    assert no_network == []
