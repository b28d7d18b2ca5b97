"""`prepared_dataset`: the experiment's data source, split and written with a manifest."""

from typing import Any

import dagster as dg
from pydantic import Field

from ..resources import StorageResource
from .common import DEFAULT_EXPERIMENT, GROUP, build_experiment, config_failure, table


class DatasetConfig(dg.Config):
    """Which experiment's data to prepare; `overrides` use the CLI's key=value syntax."""

    experiment: str = Field(
        default=DEFAULT_EXPERIMENT, description="the experiment class, `package.module:Class`"
    )
    overrides: list[str] = Field(
        default=[], description="experiment overrides (data_cfg.*) in the CLI's key=value syntax"
    )


@dg.asset(group_name=GROUP, code_version="1", kinds={"pytorch"})
def prepared_dataset(
    context: dg.AssetExecutionContext, config: DatasetConfig, storage: StorageResource
) -> dg.Output[dict[str, Any]]:
    """Train/val/test tensors with a sha256 manifest, versioned by content."""
    from tinyexp_core.exceptions import DatasetError

    exp = build_experiment(config.experiment, config.overrides)
    try:
        manifest = exp.prepare_data(str(storage.resolved_root()))
    except DatasetError as err:
        raise config_failure(err, "invalid dataset") from None
    context.log.info(f"prepared {manifest.source} v{manifest.data_version} at {manifest.path}")
    histogram = [
        {"class": c, **{split: manifest.class_histogram[split][c] for split in manifest.counts}}
        for c in range(manifest.num_classes)
    ]
    value = {
        "path": manifest.path,
        "data_version": manifest.data_version,
        "source": manifest.source,
        "num_classes": manifest.num_classes,
    }
    metadata: dict[str, Any] = {
        "dataset_path": dg.MetadataValue.path(manifest.path),
        "data_version": manifest.data_version,
        "source": manifest.source,
        "num_classes": manifest.num_classes,
        "shape": str(manifest.shape),
        "class_histogram": table(histogram),
        "sha256": dg.MetadataValue.json(
            {name: info["sha256"] for name, info in manifest.files.items()}
        ),
    }
    metadata.update({f"samples_{split}": n for split, n in manifest.counts.items()})
    return dg.Output(value, metadata=metadata, data_version=dg.DataVersion(manifest.data_version))
