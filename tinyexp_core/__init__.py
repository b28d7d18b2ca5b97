"""tinyexp_core: the TinyExp experiment framework (no Dagster imports).

Public names are imported lazily, so `import tinyexp_core.progress` (say, from the
Dagster layer) does not pull in torch or ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TinyExp": "config.experiment",
    "ProgressCfg": "config.experiment",
    "build_exp": "config.factory",
    "apply_overrides": "config.factory",
    "load_exp_class": "config.factory",
    "store_and_run_exp": "cli",
    "Accelerator": "accelerators",
    "AcceleratorCfg": "accelerators",
    "CPUAccelerator": "accelerators",
    "DDPAccelerator": "accelerators",
    "HFAccelerator": "accelerators",
    "build_accelerator": "accelerators",
    "InfiniteSampler": "data",
    "HoldOnesampleDataLoader": "data",
    "TensorBatchLoader": "data",
    "RedisClusterManager": "services.redis_cluster",
    "EmbeddedRedis": "services.embedded_redis",
    "RedisCfgMixin": "services.redis_cache",
    "update_ema": "training.ema",
    "tiny_logger_setup": "logging",
    "LoggerCfg": "logging",
    "WandbCfg": "logging",
    "CheckpointCfg": "checkpoint",
    "CheckpointManager": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "RayLauncher": "launchers.ray",
    "RayLaunchSpec": "launchers.ray_spec",
    "TrainingSession": "training",
}

_EXCEPTIONS = (
    "TinyExpError",
    "ConfigError",
    "UnknownConfigurationKeyError",
    "ConfigTypeError",
    "ConfigValueError",
    "OverrideSyntaxError",
    "ExperimentImportError",
    "UnknownAcceleratorTypeError",
    "UnknownExperimentModeError",
    "UnknownLauncherError",
    "InvalidWorkerCountError",
    "InsufficientResourcesError",
    "InsufficientCPUError",
    "ResourceWaitTimeoutError",
    "RayConnectionError",
    "WorkerFailedError",
    "CudaNotAvailableError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CheckpointCorruptError",
    "InvalidCheckpointTypeError",
    "UnsupportedCheckpointFormatError",
    "CheckpointMismatchError",
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetCorruptError",
    "RedisError",
    "RedisStartError",
    "RedisClusterConfigError",
    "InvalidRedisUrlError",
)
_EXPORTS.update({name: "config.exceptions" for name in _EXCEPTIONS})
_CONTRACT = ("PrimaryMetric", "PreparedData", "EpochRecord", "TrainResult", "EvalResult")
_EXPORTS.update({name: "contract" for name in _CONTRACT})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tinyexp_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return __all__
