"""The TinyExp base dataclass: one experiment class is the entry point.

A feature is a nested `@dataclass XXXCfg` field with fields that describe it and
`build_*` methods that act only when called. Subclasses add their own configs and
implement `train()` (and, for models, `evaluate()` and `prepare_data()`); `run()`
dispatches on `mode`. The same instance runs from the terminal, inside a Ray worker
and inside a Dagster asset.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from tinyexp_core.checkpoint import CheckpointCfg
from tinyexp_core.config.env import (
    ENV_ASSET,
    ENV_ATTEMPT,
    ENV_CACHE_URL,
    ENV_PROGRESS_RUN_ID,
    ENV_PROGRESS_URL,
)
from tinyexp_core.config.exceptions import (
    ConfigValueError,
    UnknownConfigurationKeyError,
    UnknownExperimentModeError,
)
from tinyexp_core.config.overrides import apply_overrides, to_dict, to_yaml
from tinyexp_core.files import atomic_write_text
from tinyexp_core.logging import LoggerCfg, WandbCfg
from tinyexp_core.redaction import redact_value
from tinyexp_core.storage.location import local_path

Mode = Literal["train", "val", "help"]
Launcher = Literal["mp", "ray"]
MODES = get_args(Mode)
LAUNCHERS = get_args(Launcher)

# The environment-variable names live in `config.env` (no imports, so a reader need not load
# the experiment); they stay importable from here, where they were defined before.
__all__ = [
    "ENV_ASSET",
    "ENV_ATTEMPT",
    "ENV_CACHE_URL",
    "ENV_PROGRESS_RUN_ID",
    "ENV_PROGRESS_URL",
    "LAUNCHERS",
    "MODES",
    "Launcher",
    "Mode",
    "ProgressCfg",
    "TinyExp",
    "check_redis_url",
]


def _default_exp_name() -> str:
    """The main module's file name (`mnist_exp` for `python -m ...mnist_exp`), else `exp`."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if isinstance(main_file, str) and main_file:
        return Path(main_file).stem
    return "exp"


def check_redis_url(key: str, url: str) -> None:
    """Raise ConfigValueError naming `key` unless `url` is a well-formed Redis URL; the
    value shown has its password hidden."""
    from tinyexp_core.config.exceptions import InvalidRedisUrlError
    from tinyexp_core.services.redis_client import validate_redis_url

    try:
        validate_redis_url(url)
    except InvalidRedisUrlError as err:
        raise ConfigValueError(key, err.url, f"a Redis URL ({err.reason})") from None


@dataclass
class ProgressCfg:
    """Run-level progress reporting to Redis (rank 0 only, best effort)."""

    enabled: bool = True
    url: str = ""  # empty: take $TINYEXP_PROGRESS_URL; empty too: no progress store
    throttle_s: float = 2.0  # seconds between per-step writes
    finished_ttl_s: int = 7 * 24 * 3600  # seconds a finished run's hash stays in Redis

    def validate(self) -> None:
        if self.throttle_s < 0:
            raise ConfigValueError("throttle_s", self.throttle_s, "a number of seconds >= 0")
        if self.url:
            check_redis_url("url", self.url)
        if self.finished_ttl_s < 1:
            raise ConfigValueError(
                "finished_ttl_s", self.finished_ttl_s, "an integer number of seconds >= 1"
            )

    def build_reporter(self, run_id: str, *, is_main_process: bool = True):
        """A Redis reporter on the main process when a URL is known, else a no-op one."""
        from tinyexp_core.progress import NullProgressReporter, build_progress_reporter

        url = self.url or os.environ.get(ENV_PROGRESS_URL, "")
        run_id = os.environ.get(ENV_PROGRESS_RUN_ID) or run_id
        if not (self.enabled and is_main_process and url):
            return NullProgressReporter(run_id)
        return build_progress_reporter(
            url, run_id, throttle_s=self.throttle_s, ttl_s=self.finished_ttl_s
        )

    def announce_rank(self, run_id: str, *, rank: int, run_dir: str) -> None:
        """Register this rank process (host, pid) in the progress store and install its
        stack dump, so a hung run can be diagnosed (`tinyexp_core.progress.stacks`); best effort."""
        from tinyexp_core.progress.stacks import announce_rank

        url = (self.url or os.environ.get(ENV_PROGRESS_URL, "")) if self.enabled else ""
        attempt = os.environ.get(ENV_ATTEMPT, "1")
        announce_rank(
            url,
            os.environ.get(ENV_PROGRESS_RUN_ID) or run_id,
            rank,
            run_dir=run_dir,
            attempt=int(attempt) if attempt.isdigit() else 1,
            ttl_s=self.finished_ttl_s,
        )


@dataclass(repr=False)
class TinyExp:
    """Base experiment: launcher, resources, output location and the shared configs."""

    exp_name: str = field(default_factory=_default_exp_name)
    # import path `package.module:Class`; filled in by build_exp / store_and_run_exp
    exp_class: str = ""
    mode: Mode = "train"
    launcher: Launcher = "mp"
    num_workers: int = 1  # DDP world size: Ray actors (ray) or local processes (mp)
    num_cpus_per_worker: float = 1.0  # also each rank's torch threads
    num_gpus_per_worker: float = 0.0
    # empty: $RAY_ADDRESS if set, else a local Ray on 127.0.0.1 (under Dagster: the storage
    # root's, kept warm between runs); "local": a local Ray started and stopped for the run
    ray_address: str = ""
    output_root: str = "./output"  # run directories are <output_root>/<run_id>
    run_id: str = ""  # empty: generated at run start
    seed: int = 0
    resume_from: str = ""  # a checkpoint path, `auto` (this run dir's last valid), or empty

    logger_cfg: LoggerCfg = field(default_factory=LoggerCfg)
    wandb_cfg: WandbCfg = field(default_factory=WandbCfg)
    checkpoint_cfg: CheckpointCfg = field(default_factory=CheckpointCfg)
    progress_cfg: ProgressCfg = field(default_factory=ProgressCfg)

    # keys overridden at build time (TinyExp 0.0.1 name)
    overrided_cfg: dict = field(default_factory=dict)
    # TinyExp 0.0.1 kept Hydra's settings here, and its experiments log their config as
    # `OmegaConf.structured(self)` minus this key (`del cfg["hydra"]`). Hydra is not used:
    # the key stays empty, takes no overrides and is left out of every config dump.
    hydra: dict = field(default_factory=dict)
    # Not a config field (no override, not in the config or its hash): splits rank 0 scores
    # the best checkpoint on right after train(), into TrainResult.evaluations
    # (training/after.py). The Dagster training asset sets it for its gate and evaluation.
    evaluate_after_train: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(exp_name={self.exp_name!r}, rank={os.getenv('RANK', '0')})"

    def validate(self) -> None:
        """Cross-field checks, run after every override is applied (`Literal` choices such
        as `mode` and `launcher` are checked by the override parser)."""
        if self.num_workers < 1:
            raise ConfigValueError("num_workers", self.num_workers, "an integer >= 1")
        if self.num_cpus_per_worker <= 0:
            raise ConfigValueError("num_cpus_per_worker", self.num_cpus_per_worker, "a number > 0")
        if self.num_gpus_per_worker < 0:
            raise ConfigValueError("num_gpus_per_worker", self.num_gpus_per_worker, "a number >= 0")

    # ------------------------------------------------------------------ identity
    def ensure_run_id(self) -> str:
        """The run id: configured (an orchestrator forces its own), or generated once."""
        if not self.run_id:
            from tinyexp_core.progress import new_run_id

            self.run_id = new_run_id()
        return self.run_id

    def get_run_dir(self) -> str:
        """`<output_root>/<run_id>` on this node: with an object-store `output_root`
        (`s3://...`), its place in this node's mirror (`tinyexp_core.storage`)."""
        run_dir = os.path.join(self.output_root, self.ensure_run_id())
        return str(local_path(run_dir)) if "://" in run_dir else run_dir

    def ensure_run_dir(self) -> str:
        run_dir = self.get_run_dir()
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        return run_dir

    def config_dict(self) -> dict[str, Any]:
        """The effective config as a nested dict, the record of the run (checkpoints,
        summaries, orchestrator metadata): credentials inside URLs are hidden."""
        return redact_value(to_dict(self))

    def config_yaml(self) -> str:
        """`config_dict()` as YAML: what runs log and `config.yaml` holds."""
        return to_yaml(self)

    def dump_config(self, run_dir: str | None = None) -> str:
        """Write the effective config to `<run_dir>/config.yaml` and return the path."""
        path = Path(run_dir or self.ensure_run_dir()) / "config.yaml"
        atomic_write_text(path, self.config_yaml())
        return str(path)

    # ------------------------------------------------------------------ run contract
    def run(self) -> Any:
        """Dispatch on `mode`: `train` -> train() (then, on rank 0, the best checkpoint
        scored on `evaluate_after_train`'s splits), `val` -> evaluate(resume_from)."""
        if self.mode == "train":
            from tinyexp_core.training.after import evaluate_after_training

            return evaluate_after_training(self, self.train())
        if self.mode == "val":
            return self.evaluate(self.resume_from)
        raise UnknownExperimentModeError(self.mode, ("train", "val"))

    def train(self) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not implement train()")

    def evaluate(self, checkpoint_path: str, split: str = "test") -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate()")

    def prepare_data(self, storage_root: str) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement prepare_data()")

    # ------------------------------------------------------------------ 0.0.1 compat
    def set_cfg(self, cfg: Any, cfg_object: Any = None) -> Any:
        """Apply a nested mapping (dict or DictConfig) of overrides, as TinyExp 0.0.1 did.

        Unknown keys raise UnknownConfigurationKeyError; values are type-checked like
        command-line overrides.
        """
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        target = self if cfg_object is None else cfg_object
        overrides = [f"{key}={_dump_value(value)}" for key, value in _flatten(cfg)]
        for key, _ in _flatten(cfg):
            if not _has_path(target, key):
                raise UnknownConfigurationKeyError(key)
        changed = apply_overrides(target, overrides)
        self.overrided_cfg.update(redact_value({k: v[1] for k, v in changed.items()}))
        return target


def _flatten(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _dump_value(value: Any) -> str:
    import json

    if isinstance(value, str):
        return value
    return json.dumps(value)


def _has_path(obj: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {
            f.name for f in dataclasses.fields(obj)
        }:
            return False
        obj = getattr(obj, part)
    return True
