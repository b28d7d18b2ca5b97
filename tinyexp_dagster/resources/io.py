"""RunScopedPickleIOManager: asset values kept per producing run, so runs never cross.

Dagster's default filesystem IO manager keeps one file per asset for every run: two
runs finishing together, or a re-executed step, can read another run's upstream value
(and promote another run's model). Here each value is written under the run that
produced it and also as the asset's latest value. A step reads its upstream's copy from
the run that produced it (its own run, or the parent run on re-execution); an asset not
produced in the run (`retrain_job` reading `prepared_dataset`) falls back to the latest.
"""

import os
import pickle
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from .storage import StorageResource

LATEST = "latest.pickle"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunScopedPickleIOManager(dg.ConfigurableIOManager):
    """Pickled asset values under `<storage root>/values/<asset>/<run_id>.pickle`, plus the
    asset's `latest.pickle`; on shared storage every host sees the same values."""

    storage: dg.ResourceDependency[StorageResource] = Field(
        description="the storage root whose values/ folder holds the asset values"
    )

    def _asset_dir(self, key: dg.AssetKey) -> Path:
        return (self.storage.resolved_root() / "values").joinpath(*key.path)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        directory = self._asset_dir(context.asset_key)
        directory.mkdir(parents=True, exist_ok=True)
        data = pickle.dumps(obj)
        run_file = directory / f"{context.run_id}.pickle"
        _atomic_write(run_file, data)
        _atomic_write(directory / LATEST, data)
        context.add_output_metadata({"stored_value": dg.MetadataValue.path(str(run_file))})

    def load_input(self, context: dg.InputContext) -> Any:
        directory = self._asset_dir(context.asset_key)
        candidates = []
        upstream = context.upstream_output
        if upstream is not None:
            try:
                candidates.append(directory / f"{upstream.run_id}.pickle")
            except dg.DagsterInvariantViolationError:
                pass  # no producing run known for this input
        candidates.append(directory / LATEST)
        for path in candidates:
            if path.exists():
                with open(path, "rb") as f:
                    return pickle.load(f)
        raise dg.Failure(
            f"asset {context.asset_key.to_user_string()} has no stored value under "
            f"{directory}: materialize it first (training_pipeline does)",
            allow_retries=False,
        )
