"""`<name>/prepared_dataset`: the experiment's data source, split and written with a manifest."""

from typing import Any

import dagster as dg
from pydantic import Field

from tinyexp_dagster.assets.common import PipelineSpec, build_experiment, config_failure, table
from tinyexp_dagster.resources import StorageResource
from tinyexp_dagster.schema import with_exp_field

# The dataset op's `exp`: the data section and the seed (which draws the split), no more.
DATA_FIELDS = ("data_cfg", "seed")


class DatasetConfig(dg.Config):
    """Overrides of the experiment's data config, in the CLI's key=value syntax."""

    overrides: list[str] = Field(
        default=[],
        description="experiment overrides (data_cfg.*) in the CLI's key=value syntax, "
        "applied after `exp`",
    )


def build_prepared_dataset(spec: PipelineSpec) -> dg.AssetsDefinition:
    """The pipeline's dataset asset: `exp.prepare_data(storage_root)` -> PreparedData."""
    config_cls = with_exp_field(
        DatasetConfig,
        spec.exp_cls,
        include=DATA_FIELDS,
        defaults=spec.defaults,
        name=f"{spec.name}_DatasetConfig",
    )

    @dg.asset(
        key=spec.key("prepared_dataset"),
        group_name=spec.name,
        code_version="1",
        kinds={"pytorch"},
        description=f"{spec.name}: train/val/test data with a sha256 manifest, versioned by "
        "content.",
    )
    def prepared_dataset(
        context: dg.AssetExecutionContext, config: config_cls, storage: StorageResource
    ) -> dg.Output[dict[str, Any]]:
        from tinyexp_core.config.exceptions import DatasetError
        from tinyexp_core.contract import PreparedData

        exp = build_experiment(spec.exp_cls, spec.run_overrides(config.exp, config.overrides))
        storage.check()  # an object-store root: reachable, keys accepted, bucket there
        try:
            prepared = exp.prepare_data(str(storage.resolved_root()))
        except DatasetError as err:
            raise config_failure(err, "invalid dataset") from None
        storage.publish(prepared.path)  # with an object-store root: into the bucket, verified
        if not isinstance(prepared, PreparedData):  # an older manifest type with to_dict()
            prepared = PreparedData.from_dict(prepared.to_dict())
        context.log.info(f"prepared {prepared.source} v{prepared.data_version} at {prepared.path}")
        return dg.Output(
            prepared.to_dict(),
            metadata=dataset_metadata(prepared),
            data_version=dg.DataVersion(prepared.data_version),
        )

    return prepared_dataset


def dataset_metadata(prepared: Any) -> dict[str, Any]:
    """Path, version, counts per split, sha256 per file, class histogram (classification)."""
    metadata: dict[str, Any] = {
        "dataset_path": dg.MetadataValue.path(prepared.path),
        "data_version": prepared.data_version,
        "source": prepared.source,
        "num_classes": prepared.num_classes,
        "shape": str(prepared.shape),
        "sha256": dg.MetadataValue.json({k: v.get("sha256") for k, v in prepared.files.items()}),
    }
    if prepared.num_classes and prepared.class_histogram:
        splits = list(prepared.class_histogram)
        histogram = [
            {"class": c, **{split: prepared.class_histogram[split][c] for split in splits}}
            for c in range(prepared.num_classes)
        ]
        metadata["class_histogram"] = table(histogram)
    metadata.update({f"samples_{split}": n for split, n in prepared.counts.items()})
    return metadata
