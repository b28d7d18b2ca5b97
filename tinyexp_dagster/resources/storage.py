"""Where datasets, runs and promoted models live: a local folder, or an object-store URI."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

ENV_STORAGE_ROOT = "TINYEXP_STORAGE_ROOT"
DEFAULT_STORAGE_DIR = ".tinyexp"
# Resource fields exported to the standard variables fsspec's S3 backend reads.
_AWS_ENV = {
    "endpoint_url": "AWS_ENDPOINT_URL",
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "region": "AWS_DEFAULT_REGION",
}


def default_storage_root() -> str:
    """`$TINYEXP_STORAGE_ROOT`, else `.tinyexp/` under the working directory."""
    return os.environ.get(ENV_STORAGE_ROOT) or str(Path.cwd() / DEFAULT_STORAGE_DIR)


class StorageResource(dg.ConfigurableResource):
    """The storage root: a local folder by default; an object-store URI (`s3://bucket/prefix`,
    anything fsspec opens) when workers share no filesystem. With a URI, this process works
    in its node's mirror of the bucket (`tinyexp_core.storage`) and publishes what it writes.

    Credentials come from the standard environment (`AWS_ACCESS_KEY_ID`, ...,
    `AWS_ENDPOINT_URL`), or from the fields below set with `dg.EnvVar(...)`, which this
    process exports to those variables (never logged or recorded). Ray workers read the same
    variables from their own environment (the cluster's pods or VMs)."""

    root: str = Field(
        default="",
        description="folder or URI (s3://bucket/prefix) of datasets, runs and models; empty: "
        "$TINYEXP_STORAGE_ROOT, else ./.tinyexp",
    )
    endpoint_url: str = Field(
        default="", description="S3 endpoint (an S3-compatible server); empty: $AWS_ENDPOINT_URL"
    )
    access_key_id: str = Field(
        default="", description="S3 access key id; use dg.EnvVar; empty: $AWS_ACCESS_KEY_ID"
    )
    secret_access_key: str = Field(
        default="", description="S3 secret; use dg.EnvVar; empty: $AWS_SECRET_ACCESS_KEY"
    )
    region: str = Field(default="", description="S3 region; empty: $AWS_DEFAULT_REGION")

    def _export_credentials(self) -> None:
        """Fields set (e.g. from dg.EnvVar) become the AWS_* variables the S3 client reads in
        this process; called before this resource touches the store."""
        for name, variable in _AWS_ENV.items():
            if getattr(self, name):
                os.environ[variable] = getattr(self, name)

    def root_location(self) -> str:
        """The configured root as given: a URI, or a local path."""
        return self.root or default_storage_root()

    def check(self) -> None:
        """An object-store root must be reachable, accept the keys and hold the bucket: a
        step failure (not retried) of one line naming the URI otherwise; a local root passes.
        Called before Ray starts."""
        from tinyexp_core.redaction import redact_text
        from tinyexp_core.storage import StorageUnreachableError, check_storage

        self._export_credentials()
        try:
            check_storage(self.root_location())
        except StorageUnreachableError as err:
            raise dg.Failure(
                description=redact_text(str(err)),
                metadata={"storage_root": err.uri, "problem": err.kind},
                allow_retries=False,
            ) from None

    def resolved_root(self) -> Path:
        """The local folder: the root itself, or this node's mirror of an object-store root."""
        from tinyexp_core.storage import local_path

        self._export_credentials()
        root = local_path(self.root_location()).expanduser().resolve()
        # Owner-only when we create it: runs, models and the Redis password live here.
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return root

    def to_uri(self, path: str | Path) -> str:
        """A path under the root as the other nodes name it: its URI for an object-store root,
        the path itself for a local one."""
        from tinyexp_core.storage import to_uri

        return to_uri(path)

    def publish(self, path: str | Path) -> list[str]:
        """Upload a file or folder under an object-store root (sidecars verified); no-op else."""
        from tinyexp_core.storage import publish

        self._export_credentials()
        return publish(path)

    def datasets_dir(self) -> Path:
        return self.resolved_root() / "datasets"

    def runs_dir(self) -> Path:
        return self.resolved_root() / "runs"

    def models_dir(self) -> Path:
        return self.resolved_root() / "models"
