"""RunScopedJSONIOManager: asset values kept per producing run, as JSON, so runs never cross.

Dagster's default filesystem IO manager keeps one file per asset for every run: two
runs finishing together, or a re-executed step, can read another run's upstream value
(and promote another run's model). Here each value is written under the run that
produced it and also as the asset's latest value. A step reads its upstream's copy from
the run that produced it (its own run, or the parent run on re-execution); an asset not
produced in the run (`retrain_job` reading `prepared_dataset`) falls back to the latest.

Values are JSON, never pickles: the storage root may be shared storage, and reading a
pickle runs whatever code its writer put in it. Asset values are small dicts of strings,
numbers and lists; tensors and checkpoints stay files, referenced by path and sha256.
"""

import hashlib
import json
from pathlib import Path
from typing import TypeAlias

import dagster as dg
from pydantic import Field

from tinyexp_core.files import atomic_write_text
from tinyexp_dagster.resources.storage import StorageResource

SUFFIX = ".json"
LATEST = f"latest{SUFFIX}"

# An asset value as JSON holds it (a string: the alias refers to itself).
JSONValue: TypeAlias = "dict[str, JSONValue] | list[JSONValue] | str | int | float | bool | None"


class RunScopedJSONIOManager(dg.ConfigurableIOManager):
    """JSON asset values under `<storage root>/values/<asset>/<run_id>.json`, plus the
    asset's `latest.json`; on shared storage every host sees the same values."""

    storage: dg.ResourceDependency[StorageResource] = Field(
        description="the storage root whose values/ folder holds the asset values"
    )

    def _asset_dir(self, key: dg.AssetKey) -> Path:
        return (self.storage.resolved_root() / "values").joinpath(*key.path)

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        directory = self._asset_dir(context.asset_key)
        try:
            text = json.dumps(obj, indent=1, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise dg.Failure(
                f"asset {context.asset_key.to_user_string()} returned a value that is not "
                f"JSON ({err}); allowed: dicts, lists, strings, numbers, booleans and None "
                "(store files by path)",
                allow_retries=False,
            ) from None
        directory.mkdir(parents=True, exist_ok=True)
        run_file = directory / f"{context.run_id}{SUFFIX}"
        atomic_write_text(run_file, text)
        latest = _latest(directory, context)
        latest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(latest, text)
        # An object-store root: the values go to the bucket too, for run workers elsewhere.
        self.storage.publish(run_file)
        self.storage.publish(latest)
        context.add_output_metadata({"stored_value": dg.MetadataValue.path(str(run_file))})

    def load_input(self, context: dg.InputContext) -> JSONValue:
        directory = self._asset_dir(context.asset_key)
        candidates = []
        upstream = context.upstream_output
        if upstream is not None:
            try:
                candidates.append(directory / f"{upstream.run_id}{SUFFIX}")
            except dg.DagsterInvariantViolationError:
                pass  # no producing run known for this input
        candidates.append(_latest(directory, context))
        for path in candidates:
            if path.exists():
                return _read(path, context.asset_key)
        from tinyexp_core.storage import fetch_mirror

        # Written by a run worker on another host: this host's mirror catches up, once.
        if fetch_mirror(directory):
            for path in candidates:
                if path.exists():
                    return _read(path, context.asset_key)
        raise dg.Failure(
            f"asset {context.asset_key.to_user_string()} has no stored value under "
            f"{directory}: materialize it first (training_pipeline does)",
            allow_retries=False,
        )


def _latest(directory: Path, context: dg.OutputContext | dg.InputContext) -> Path:
    """The asset's latest value; a partitioned asset's (a sweep trial's) is per partition,
    so a later run of one trial never reads another trial's value."""
    if not context.has_asset_partitions:
        return directory / LATEST
    keys = context.asset_partition_keys
    if len(keys) != 1:
        raise dg.Failure(
            f"asset {context.asset_key.to_user_string()}: one partition per run, got {keys}",
            allow_retries=False,
        )
    digest = hashlib.sha256(keys[0].encode()).hexdigest()[:16]  # any key is a safe name
    return directory / "partitions" / f"{digest}{SUFFIX}"


def _read(path: Path, key: dg.AssetKey) -> JSONValue:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are
        raise dg.Failure(
            f"stored value {path} of asset {key.to_user_string()} is not valid JSON ({err}); "
            "materialize the asset again",
            allow_retries=False,
        ) from None
