"""Typed errors of tinyexp_core.

Every error carries the offending value and, where there is a fixed set, the allowed
ones, so a message can say what was wrong, the value, and what is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from tinyexp_core.redaction import redact_value


class TinyExpError(Exception):
    """Base class of every error raised on purpose by tinyexp.

    `retryable` says whether running the same thing again can help: False for what every
    attempt would meet again (a bad config, a corrupt checkpoint or dataset, a request no
    cluster can hold), True for what may pass (a rank that died, a busy or unreachable
    cluster). Orchestrators ask `is_retryable(err)` instead of listing classes.
    """

    retryable: ClassVar[bool] = True

    def __reduce__(self):
        # Subclasses take their own arguments, not the message held in `args`, so the
        # default reduction cannot rebuild them. Rebuilt from message and fields instead,
        # an error raised in a Ray worker reaches the driver with its type and fields.
        return (_rebuild_error, (type(self), self.args), self.__dict__)


def _rebuild_error(cls: type[BaseException], args: tuple) -> BaseException:
    err = cls.__new__(cls, *args)
    err.args = args
    return err


class ConfigError(TinyExpError, ValueError):
    """Base class of configuration errors: raised before any compute starts."""

    retryable = False


class UnknownConfigurationKeyError(ConfigError, AttributeError):
    """An override names a key that the experiment does not have."""

    def __init__(self, key: str, suggestion: str | None = None) -> None:
        self.key = key
        self.suggestion = suggestion
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        super().__init__(f"unknown config key {key!r}{hint}")


class ConfigTypeError(ConfigError, TypeError):
    """An override value cannot be converted to the field's declared type."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        self.key = key
        self.value = redact_value(value)  # errors are shown and logged: no credentials
        self.expected = expected
        super().__init__(f"config key {key!r}: expected {expected}, got {self.value!r}")


class ConfigValueError(ConfigError):
    """A value has the right type but is outside what is allowed."""

    def __init__(self, key: str, value: object, allowed: str | Sequence[object]) -> None:
        self.key = key
        self.value = redact_value(value)  # errors are shown and logged: no credentials
        self.allowed = allowed
        super().__init__(self._message())

    def _message(self) -> str:
        allowed = self.allowed
        if not isinstance(allowed, str):
            allowed = "one of " + ", ".join(repr(a) for a in allowed)
        return f"config key {self.key!r}: got {self.value!r}, allowed: {allowed}"

    def rekey(self, key: str) -> None:
        """Name the value by its full dotted key (`checkpoint_cfg.keep_last_n`), keeping
        the error's class; used when a nested config's `validate()` raised it."""
        self.key = key
        self.args = (self._message(),)


class OverrideSyntaxError(ConfigError):
    """An override is not of the form key=value."""

    def __init__(self, override: str) -> None:
        self.override = redact_value(override)
        super().__init__(f"override {self.override!r} is not of the form key=value")


class ExperimentImportError(ConfigError, ImportError):
    """An experiment import path does not name an importable TinyExp subclass."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot load experiment {path!r}: {reason}")


class UnknownAcceleratorTypeError(ConfigValueError):
    """An accelerator name the code that builds it does not know. Raised with one argument
    (as TinyExp 0.0.1's experiments do, from their own `AcceleratorCfg`) it lists no
    choices: only the raising code knows its own, and this project's may differ."""

    def __init__(self, accelerator: str, allowed: Sequence[str] | None = None) -> None:
        what = "an accelerator the experiment's accelerator_cfg knows"
        super().__init__("accelerator", accelerator, what if allowed is None else tuple(allowed))
        self.accelerator = accelerator


class UnknownExperimentModeError(ConfigValueError):
    def __init__(self, mode: str, allowed: Sequence[str] = ("train", "val", "help")) -> None:
        super().__init__("mode", mode, tuple(allowed))
        self.mode = mode


class UnknownLauncherError(ConfigValueError):
    def __init__(self, launcher: str, allowed: Sequence[str] = ("mp", "ray")) -> None:
        super().__init__("launcher", launcher, tuple(allowed))
        self.launcher = launcher


class InvalidWorkerCountError(ConfigValueError):
    def __init__(self, num_workers: int) -> None:
        super().__init__("num_workers", num_workers, "an integer >= 1")
        self.num_workers = num_workers


class InsufficientResourcesError(TinyExpError, RuntimeError):
    """A resource request can never be satisfied by the cluster."""

    retryable = False

    def __init__(
        self,
        resource: str,
        needed: float,
        available: float,
        detail: str = "",
        where: str = "the Ray cluster",
    ) -> None:
        self.resource = resource
        self.needed = needed
        self.available = available
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"the job needs {needed:g} {resource} but {where} has {available:g} in total{extra}"
        )


# Kept for TinyExp 0.0.1 compatibility.
InsufficientCPUError = InsufficientResourcesError


class ResourceWaitTimeoutError(TinyExpError, TimeoutError):
    """Resources exist but were not granted within the configured timeout."""

    def __init__(self, what: str, timeout_s: float) -> None:
        self.what = what
        self.timeout_s = timeout_s
        super().__init__(f"{what} not granted within {timeout_s:g} s (cluster busy?)")


class RayConnectionError(TinyExpError, ConnectionError):
    """The configured Ray address cannot be reached."""

    def __init__(self, address: str, cause: str) -> None:
        self.address = address
        self.cause = cause
        super().__init__(f"cannot connect to Ray at {address!r}: {cause}")


class WorkerFailedError(TinyExpError, RuntimeError):
    """A DDP worker died or raised; names the rank and the cause."""

    def __init__(self, rank: int, cause: str) -> None:
        self.rank = rank
        self.cause = cause
        super().__init__(f"worker rank {rank} failed: {cause}")


class CudaNotAvailableError(TinyExpError, RuntimeError):
    retryable = False

    def __init__(self, what: str = "this accelerator") -> None:
        super().__init__(f"CUDA is required by {what} but is not available")


class CheckpointError(TinyExpError):
    """Base class of checkpoint errors."""

    retryable = False


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"checkpoint not found: {path}")


class CheckpointCorruptError(CheckpointError, ValueError):
    """The file on disk does not match the sha256 recorded when it was written."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"checkpoint {path} is corrupt: {reason}")


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, read-only, file too large, ...): the
    OS error and the file, with the earlier checkpoints left as they were."""

    def __init__(self, path: str, cause: OSError) -> None:
        self.path = path
        self.cause = cause
        reason = cause.strerror or str(cause)
        code = f"[Errno {cause.errno}] " if cause.errno else ""
        super().__init__(
            f"could not write checkpoint {path}: {code}{reason}; the checkpoints written "
            "before it are untouched"
        )

    def __str__(self) -> str:  # OSError's own __str__ would show only its args
        return str(self.args[0]) if self.args else super().__str__()


class InvalidCheckpointTypeError(CheckpointError, TypeError):
    def __init__(self, path: str, checkpoint_type: str) -> None:
        self.path = path
        self.checkpoint_type = checkpoint_type
        super().__init__(f"checkpoint at {path} must be a dict, got {checkpoint_type}")


class UnsupportedCheckpointFormatError(CheckpointError, ValueError):
    def __init__(self, path: str, detail: str = "") -> None:
        self.path = path
        extra = f": {detail}" if detail else ""
        super().__init__(f"checkpoint at {path} is not a tinyexp checkpoint{extra}")


class CheckpointMismatchError(CheckpointError, ValueError):
    """A checkpoint's tensors do not fit the model (different architecture or shape)."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"checkpoint {path} does not fit the model: {detail}")


class DatasetError(TinyExpError):
    """Base class of dataset errors."""

    retryable = False


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    def __init__(self, path: str, hint: str) -> None:
        self.path = path
        self.hint = hint
        super().__init__(f"dataset file missing: {path}. {hint}")


class DatasetCorruptError(DatasetError, ValueError):
    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"dataset {path} is invalid: {reason}")


class RedisError(TinyExpError):
    """Base class of Redis helper errors."""


class RedisStartError(RedisError, RuntimeError):
    """A redis-server that we own could not be started."""

    def __init__(self, port: int | str, reason: str) -> None:
        self.port = port
        self.reason = reason
        super().__init__(f"redis-server on {port} did not start: {reason}")


class RedisClusterConfigError(ConfigValueError):
    """A RedisClusterManager argument is invalid; the message leads with 0.0.1's wording."""

    def __init__(self, key: str, value: object, allowed: str, problem: str) -> None:
        super().__init__(key, value, allowed)
        self.problem = problem
        self.args = (f"{problem}: {self.args[0]}",)


class InvalidRedisUrlError(ConfigError):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"invalid Redis URL {url!r}: {reason}")


class ModelMismatchError(TinyExpError, ValueError):
    """Two models that must share one structure do not (e.g. an EMA copy and its model)."""

    retryable = False

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"models do not match: {detail}")


class InvalidRunStatusError(ConfigValueError):
    """A run status outside the progress contract (tinyexp_core.progress.STATUSES)."""

    def __init__(self, status: str, allowed: Sequence[str]) -> None:
        super().__init__("status", status, tuple(allowed))
        self.status = status


def is_retryable(err: BaseException) -> bool:
    """Whether another attempt can help: False when `err` or any error in its cause chain
    (a rank's own error behind a WorkerFailedError) declares `retryable = False`.

    Errors that are not tinyexp's (an OSError, a bug) count as retryable: the framework
    cannot tell, and the orchestrator's retry limit bounds the cost.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TinyExpError) and not current.retryable:
            return False
        current = current.__cause__
    return True


class RunStoppedError(TinyExpError):
    """A run stopped on request (a signal, a launcher, an orchestrator) after checkpointing.

    `checkpoint` is the step-level checkpoint written at the agreed step ("" when the stop
    came before anything could be saved); `resume_from=auto` continues from it.
    """

    retryable = True  # resuming continues from the checkpoint

    def __init__(self, checkpoint: str, step: int, reason: str = "") -> None:
        self.checkpoint = checkpoint
        self.step = step
        self.reason = reason
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint"
        why = f" ({reason})" if reason else ""
        super().__init__(f"run stopped at step {step}{why}; {where}")


class UnknownModelError(TinyExpError, LookupError):
    """A model name or version that the model registry (`tinyexp_core.registry`) does not hold."""

    retryable = False
