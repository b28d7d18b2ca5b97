"""Command line entry: `python -m <experiment module> key=value ...`.

`mode=help` prints the effective config and the overridden keys. A bad override exits
with status 2 and a one-line error before anything runs; a failed run exits with 1.
SIGTERM/SIGINT checkpoint and stop the run (`tinyexp_core.training.stop`): it exits with 3 and its
last line is the command that continues it from that step (`run_id=... resume_from=auto`).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from tinyexp_core.config.exceptions import ConfigError, RunStoppedError, TinyExpError
from tinyexp_core.config.factory import build_exp, format_help
from tinyexp_core.redaction import redact_text, redact_value

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


def _importable_class(exp_cls: type) -> type:
    """Swap a class defined in `__main__` for the same class imported by module name.

    `python -m pkg.mod` runs the module as `__main__`; Ray workers and checkpoints should
    see `pkg.mod.Exp`, which they can import, not `__main__.Exp`.
    """
    if exp_cls.__module__ != "__main__":
        return exp_cls
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None or not spec.name:
        return exp_cls
    try:
        module = importlib.import_module(spec.name)
    except ImportError:
        return exp_cls
    return getattr(module, exp_cls.__qualname__, exp_cls)


def launch(exp: Any) -> Any:
    """Run the experiment with its configured launcher; returns rank 0's result.

    A SIGTERM/SIGINT here becomes a stop request: in this process (one rank) the loop
    sees it; the mp and Ray launchers pass it on to their ranks.
    """
    from tinyexp_core.training.stop import stop_on_signals

    with stop_on_signals():
        return _launch(exp)


def _launch(exp: Any) -> Any:
    from tinyexp_core.services.redis_cache import serving_redis_cache

    with serving_redis_cache(exp):
        if exp.launcher == "ray":
            from tinyexp_core.launchers.ray import launch_on_ray

            return launch_on_ray(exp, log_callback=lambda line: print(line, file=sys.stderr))[0]
        from tinyexp_core.launchers import launch_local

        return launch_local(exp)[0]


def main(argv: Sequence[str] | None = None, exp_cls: type | str | None = None) -> int:
    """Parse overrides, then print help or run; returns the process exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if exp_cls is None:
        if not args or "=" in args[0]:
            print(
                "usage: python -m tinyexp_core.cli package.module:Exp [key=value ...]",
                file=sys.stderr,
            )
            return EXIT_USAGE
        exp_cls, args = args[0], args[1:]
    if isinstance(exp_cls, type):
        exp_cls = _importable_class(exp_cls)
    try:
        exp = build_exp(exp_cls, args)
    except ConfigError as err:
        _error(err)
        return EXIT_USAGE
    if exp.mode == "help":
        sys.stdout.write(format_help(exp, getattr(exp, "_changed", {})))
        return EXIT_OK
    try:
        result = launch(exp)
    except ConfigError as err:
        _error(err)
        return EXIT_USAGE
    except RunStoppedError as err:
        print(f"stopped: {redact_text(str(err))}", file=sys.stderr)
        print(f"continue with: {resume_command(exp_cls, args, exp.run_id)}", file=sys.stderr)
        return EXIT_STOPPED
    except TinyExpError as err:
        _error(err)
        return EXIT_FAILED
    # Under torchrun every rank returns here; the summary is rank 0's to print.
    if hasattr(result, "to_dict"):  # a contract result (TrainResult, EvalResult, ...)
        result = result.to_dict()
    if isinstance(result, dict) and os.environ.get("RANK", "0") == "0":
        print(json.dumps(redact_value(_summary(result)), default=str))
    return EXIT_OK


def resume_command(exp_cls: type | str, args: Sequence[str], run_id: str) -> str:
    """The command line that continues a stopped run: the same overrides, its run id and
    `resume_from=auto` (credentials in the overrides are hidden)."""
    import shlex

    if isinstance(exp_cls, type) and exp_cls.__module__ != "__main__":
        head = ["python", "-m", exp_cls.__module__]
    else:
        target = exp_cls if isinstance(exp_cls, str) else exp_cls.__qualname__
        head = ["python", "-m", "tinyexp_core.cli", target]
    kept = [a for a in args if a.split("=", 1)[0] not in ("run_id", "resume_from")]
    words = [*head, *kept, f"run_id={run_id}", "resume_from=auto"]
    return redact_text(" ".join(shlex.quote(w) for w in words))


def _error(err: Exception) -> None:
    """One line on stderr; an error may quote a value, so URL credentials are hidden."""
    message = redact_text(str(err)).replace("\n", " ")
    print(f"error: {message}", file=sys.stderr)


def _summary(result: dict) -> dict:
    """The scalars of a result, plus the primary metric and the checkpoint files."""
    summary = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    for key in ("primary_metric", "checkpoints", "metrics"):
        if isinstance(result.get(key), dict):
            summary[key] = result[key]
    return summary


def store_and_run_exp(exp_cls: type) -> None:
    """TinyExp 0.0.1 entry point for user scripts: run `exp_cls` with `sys.argv` overrides."""
    sys.exit(main(sys.argv[1:], exp_cls))


if __name__ == "__main__":
    sys.exit(main())
