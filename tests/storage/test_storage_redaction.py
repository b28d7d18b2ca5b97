"""Storage credentials never reach an error, a log line or a step failure: the root and the
endpoint are named with their keys hidden, and the resource's secret fields (dg.EnvVar) are
exported to the environment the S3 client reads, nowhere else."""

from __future__ import annotations

import dagster as dg
import pytest

from tests.storage.s3_server import free_port
from tinyexp_core.storage import StorageUnreachableError, UploadFailedError
from tinyexp_core.storage.store import reset_stores
from tinyexp_dagster.resources import StorageResource

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"


def test_storage_errors_hide_keys_in_uris_and_reasons():
    err = StorageUnreachableError(
        f"s3://AKIAX:{SECRET}@bucket/p", "unreachable", f"GET https://u:{SECRET}@h:9000 failed"
    )
    assert SECRET not in str(err) and "s3://AKIAX:***@bucket/p" in str(err)
    failed = UploadFailedError("/n/last.pt", f"s3://k:{SECRET}@b/x", 5, f"x-amz-signature={SECRET}")
    assert SECRET not in str(failed) and "/n/last.pt" in str(failed)


def test_resource_keys_from_env_vars_reach_the_client_not_the_failure(monkeypatch):
    monkeypatch.setenv("TEST_S3_SECRET", SECRET)
    monkeypatch.setenv("TEST_S3_KEY", "AKIATESTKEYID")
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "unset")  # recorded, so the resource's export is undone
        monkeypatch.delenv(name)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens: the check must fail
    resource = StorageResource(
        root="s3://some-bucket/team",
        endpoint_url=endpoint,
        access_key_id=dg.EnvVar("TEST_S3_KEY"),
        secret_access_key=dg.EnvVar("TEST_S3_SECRET"),
    )

    @dg.asset
    def probe(storage: StorageResource) -> None:
        import os

        reset_stores()
        try:
            storage.check()
        finally:
            assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET  # where the client reads it

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [probe], resources={"storage": resource}, instance=instance, raise_on_error=False
        )
        assert not result.success
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        message = failure.step_failure_data.error.message
        assert "s3://some-bucket/team" in message and "unreachable" in message
        assert message.count("\n") <= 1
        logs = instance.all_logs(result.run_id)
        text = "\n".join(str(e.dagster_event or "") + e.user_message for e in logs)
        assert SECRET not in text and SECRET not in message
    reset_stores()


@pytest.mark.parametrize("field", ["secret_access_key", "access_key_id"])
def test_resource_key_fields_are_described_as_env_vars(field):
    description = StorageResource.model_fields[field].description or ""
    assert "dg.EnvVar" in description
