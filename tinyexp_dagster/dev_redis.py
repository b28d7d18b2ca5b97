"""`dagster dev` (and so `make dev`) owns the embedded Redis of its storage root.

`dagster dev` sets `DAGSTER_IS_DEV_CLI` for the processes it starts (code server, daemon, run
workers). When one of them loads the project's definitions without a configured Redis URL,
the embedded server is started (or found) and the `dagster dev` process is registered as its
holder: the server's idle watcher keeps it up while `dagster dev` lives and, if this holder
started it, stops it as soon as `dagster dev` exits. A server it only found goes back to the
idle rule (`TINYEXP_REDIS_IDLE_STOP_S`). Outside `dagster dev` nothing happens here.

Dagster's `dg` sets `DAGSTER_IS_DEV_CLI` for all its commands too: `dg dev` starts `dagster
dev` (found as above); `dg check`, `dg list`, `dg launch` only load definitions or run once,
so there is nothing to hold, quietly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import psutil
from loguru import logger

from tinyexp_dagster.resources.storage import StorageResource

ENV_DEV_CLI = "DAGSTER_IS_DEV_CLI"  # set by `dagster dev` for every process it starts


def dagster_dev_process() -> psutil.Process | None:
    """The `dagster dev` process this process descends from, or None."""
    # `.venv/bin/dagster dev ...` or `python -m dagster dev ...`
    return _ancestor(
        lambda programs, argv: "dev" in argv[1:4] and any(p.startswith("dagster") for p in programs)
    )


def _dg_process() -> psutil.Process | None:
    """The `dg` command (`.venv/bin/dg ...`) this process descends from, or None."""
    return _ancestor(lambda programs, argv: "dg" in programs)


def _ancestor(matches: Callable[[list[str], list[str]], bool]) -> psutil.Process | None:
    """This process or its nearest ancestor for which `matches(programs, argv)` holds
    (`programs`: the base names of the first three arguments)."""
    try:
        proc: psutil.Process | None = psutil.Process()
        while proc is not None:
            argv = proc.cmdline()
            if matches([os.path.basename(arg) for arg in argv[:3]], argv):
                return proc
            proc = proc.parent()
    except psutil.Error:
        return None
    return None


def hold_embedded_redis_for_dagster_dev(storage: StorageResource, redis_url: Any) -> bool:
    """Under `dagster dev` with no Redis URL (`redis_url`: a URL, an `EnvVar` or None): start
    or find the embedded Redis of the storage root and register `dagster dev` as its holder.
    True if it did."""
    if not os.environ.get(ENV_DEV_CLI) or redis_url:
        return False
    dev = dagster_dev_process()
    if dev is None and _dg_process() is not None:
        return False  # `dg check` / `list` / `launch`: no server to hold Redis for
    if dev is None:
        logger.warning(
            "{} is set but no `dagster dev` process is among this process's ancestors: "
            "the embedded Redis follows the idle rule only",
            ENV_DEV_CLI,
        )
        return False
    from tinyexp_core.services.embedded_redis import EmbeddedRedis
    from tinyexp_core.services.redis_idle import add_holder

    server = EmbeddedRedis(storage.resolved_root())
    _, started = server.ensure_started()
    add_holder(server.holders_dir, dev.pid, started=started)
    return True
