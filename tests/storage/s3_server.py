"""An S3-compatible server on 127.0.0.1 for tests: moto's standalone server (real HTTP; the
client under test is not patched). Its state lives in this process, so a server stopped
and started again on the same port keeps its buckets: an outage, then recovery."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

ACCESS_KEY = "AKIATINYEXPTEST00001"
SECRET_KEY = "tinyexp-test-secret-never-logged"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    """A running moto server: its endpoint, the bucket made for the test, start/stop."""

    port: int
    bucket: str
    server: object

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()  # type: ignore[attr-defined]

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        _wait_listening(self.port)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )


def _wait_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"moto server did not listen on 127.0.0.1:{port}")


@contextmanager
def s3_server(monkeypatch: pytest.MonkeyPatch, bucket: str = "") -> Iterator[S3Server]:
    """A moto server with `bucket`, and the standard AWS environment pointing at it."""
    import uuid

    from tinyexp_core import storage
    from tinyexp_core.storage.store import reset_stores

    bucket = bucket or f"tinyexp-{uuid.uuid4().hex[:12]}"  # moto keeps buckets per process
    server = S3Server(free_port(), bucket, None)
    server.start()
    for key, value in {
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    reset_stores()
    server.client().create_bucket(Bucket=bucket)
    try:
        yield server
    finally:
        reset_stores()
        storage.set_uploader(None)  # its worker process uploads to this server: ends with it
        server.stop()
