"""Warm ranks: rank processes that a warm local Ray starts before the runs that use them.

Most of a rank's start on a warm Ray is its own process: Python, `import ray`, then
`import torch` (together 2-3 s on 2 cores, before the first line of the experiment). The
holder of `tinyexp-dagster ray up` (`ray_head.serve`) keeps a named pool actor
(`POOL_NAME` in `POOL_NAMESPACE`) that keeps `size` rank actors started, each with torch
imported (`PREIMPORTS`) and nothing of any run loaded. A run on that Ray takes idle ones
for its ranks (`take`: ready ones first, then ones still starting; as many as it needs and
the pool has; the rest start as usual),
uses each for that one run only and kills it at the end like any rank, then asks the pool
to refill (`release`), which starts replacements in the background.

A run takes warm ranks only where a started process can serve it: CPU ranks (Ray assigns a
GPU to an actor when it starts) and a runtime_env of environment variables only (which the
rank applies itself: `PYTHONPATH` goes on its `sys.path`). A warm rank holds no CPU of its
own while idle; the run's placement group reserves the CPUs its ranks use.

A rank taken from the pool is one-shot, so a run never sees another run's modules, stop
flag or torch.distributed state; a changed experiment module is imported fresh. But a warm
rank imported tinyexp_core (its contract, its training loop) as it warmed up: if tinyexp
changed since (an upgrade, an edit in an editable install), it would run the old code
beside a driver that has the new one (a result pickled by an old class, say). So each warm
rank takes its `code_fingerprint` as it warms up, and the driver keeps only the ranks it
takes whose fingerprint is its own (`keep_current`): the others (and those that cannot say:
a pool from before this check) are killed, the run starts ranks of its own in their place,
and the pool replaces them when the run ends, with processes that import the code then
installed. Torch is not in the fingerprint: after upgrading torch, `ray down` and `ray up`.
The pool actor itself keeps the code it started with (its `take`/`release` and the rank
class's method list): a change to those also needs `ray down` and `ray up`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from tinyexp_core.launchers.runtime import steady_malloc
from tinyexp_core.services.code_fingerprint import code_fingerprint

POOL_NAME = "tinyexp-warm-ranks"
POOL_NAMESPACE = "tinyexp"
DEFAULT_SIZE_CAP = 4  # warm ranks by default: the Ray's CPUs, at most this many
# What a warm rank imports ahead of its run: what every DDP rank of ours imports first.
# torch._dynamo: the constructors of torch.optim's optimizers and of DDP import it (about
# 1 s and 150 MB USS here), so every training run pays it before its first step. What these
# modules read from the environment at import (TORCH_*, e.g. TORCH_COMPILE_DISABLE) they
# read from the `ray up` shell's, not from the run's env_vars: set such variables there.
PREIMPORTS = (
    "torch",
    "torch.distributed",
    "torch.nn.parallel",
    "torch.utils.data",
    "torch.optim",
    "torch._dynamo",
)
_TAKE_TIMEOUT_S = 5.0
# How long the driver waits for a taken rank's fingerprint: a rank still starting answers
# once its process is up (it waits as long for the rank's node and pid anyway).
_FINGERPRINT_TIMEOUT_S = 60.0


def default_size(num_cpus: float) -> int:
    """Warm ranks a `ray up` keeps by default: one per CPU, at most `DEFAULT_SIZE_CAP`
    (each idle one holds a Python process with torch imported: ~320 MB of its own)."""
    return max(0, min(int(num_cpus), DEFAULT_SIZE_CAP))


def apply_python_path(path: str) -> None:
    """Put the entries of a PYTHONPATH value on this process's `sys.path` (front, in
    order), so a started process imports the driver's modules as a fresh one would."""
    entries = [p for p in path.split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = entries


def _preimport(modules: tuple[str, ...]) -> None:
    import importlib

    for module in modules:
        importlib.import_module(module)


class _WarmPool:
    """The pool actor: started rank actors, `take`n once each, `release`d to refill."""

    def __init__(self, size: int, rank_cls: type, preimports: tuple[str, ...]) -> None:
        self._size = size
        self._rank_cls = rank_cls
        self._preimports = preimports
        self._idle: list[tuple[Any, Any]] = []  # (actor, its ready ref)
        self._lent: dict[str, list[Any]] = {}  # run token -> actors taken
        self._refill()

    def _refill(self) -> None:
        import ray

        cls = ray.remote(self._rank_cls)
        while len(self._idle) < self._size:
            actor = cls.options(num_cpus=0, max_restarts=0, max_concurrency=2).remote()
            self._idle.append((actor, actor.warm_up.remote(self._preimports)))

    def _ready(self) -> list[tuple[Any, Any]]:
        import ray

        refs = [ref for _, ref in self._idle]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
        ready = []
        for actor, ref in self._idle:
            if ref in done:
                try:
                    ray.get(ref)
                except Exception:  # died while starting: dropped; the next refill replaces it
                    self._idle.remove((actor, ref))
                    continue
                ready.append((actor, ref))
        return ready

    def take(self, n: int, token: str) -> list[Any]:
        """Up to `n` warm ranks for the run `token`, ready ones first, then ones still
        starting (further along than a rank started now); each is handed out once."""
        self._reap()
        ready = self._ready()
        taken = (ready + [pair for pair in self._idle if pair not in ready])[:n]
        for pair in taken:
            self._idle.remove(pair)
        actors = [actor for actor, _ in taken]
        if actors:
            self._lent.setdefault(token, []).extend(actors)
        return actors

    def release(self, token: str) -> None:
        """The run `token` is over: its ranks are gone (killed here if the run could not),
        and the pool starts replacements."""
        import ray

        for actor in self._lent.pop(token, []):
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self._refill()

    def _reap(self) -> None:
        """Kill what runs whose driver process is gone never gave back (a driver killed
        before its `release`): a token starts with the driver's pid, on this host."""
        import ray

        for token in [t for t in self._lent if not _pid_alive(_token_pid(t))]:
            for actor in self._lent.pop(token):
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)

    def status(self) -> dict[str, Any]:
        import ray

        self._reap()
        ready = self._ready()
        return {"size": self._size, "ready": len(ready), "starting": len(self._idle) - len(ready),
                "lent": sum(len(a) for a in self._lent.values()),
                "ready_pids": [ray.get(ref) for _, ref in ready]}  # fmt: skip


def run_token() -> str:
    """A run's token for `take` / `release`: this (driver) process's pid first."""
    import time

    return f"{os.getpid()}-{time.time_ns()}"


def _token_pid(token: str) -> int:
    try:
        return int(token.split("-", 1)[0])
    except ValueError:
        return 0


def _pid_alive(pid: int) -> bool:
    import psutil

    return pid > 0 and psutil.pid_exists(pid)


def start_pool(size: int, rank_cls: type) -> Any:
    """Start the named pool actor on the connected Ray (the holder's) keeping `size` actors
    of `rank_cls` (the Ray launcher's rank class, which has `warm_up`); returns its handle,
    which must stay referenced for the pool to live."""
    import ray

    return (
        ray.remote(_WarmPool)
        .options(name=POOL_NAME, namespace=POOL_NAMESPACE, num_cpus=0, max_restarts=0)
        .remote(size, rank_cls, PREIMPORTS)
    )


def find_pool() -> Any | None:
    """The connected Ray's pool actor, or None when it has none (or cannot say: a run then
    starts its own ranks, as on any Ray without a pool)."""
    import ray

    try:
        return ray.get_actor(POOL_NAME, namespace=POOL_NAMESPACE)
    except Exception:  # ValueError: no such actor; anything else: no warm ranks either
        return None


def pool_status(pool: Any, timeout_s: float = _TAKE_TIMEOUT_S) -> dict[str, Any]:
    """size, ready, starting, lent (taken by runs not yet over), ready_pids."""
    import ray

    return ray.get(pool.status.remote(), timeout=timeout_s)


def take(pool: Any, n: int, token: str) -> list[Any]:
    """Up to `n` warm ranks from `pool` for the run `token`; [] when the pool cannot
    answer in time (the run starts its own ranks then)."""
    import ray

    try:
        return ray.get(pool.take.remote(n, token), timeout=_TAKE_TIMEOUT_S)
    except Exception:
        return []


def release(pool: Any, token: str) -> None:
    """Best effort: tell the pool the run `token` is over."""
    import ray

    with contextlib.suppress(Exception):
        ray.get(pool.release.remote(token), timeout=_TAKE_TIMEOUT_S)


def keep_current(
    actors: list[Any], timeout_s: float = _FINGERPRINT_TIMEOUT_S
) -> tuple[list[Any], str]:
    """(the warm ranks among `actors` that run this process's tinyexp code, "" or the line
    saying why the others are not used). The others (another `code_fingerprint`, or none:
    a pool from before fingerprints, a rank that did not answer) are killed here; the
    pool replaces them at the run's `release`."""
    import ray

    if not actors:
        return [], ""
    mine = code_fingerprint()
    theirs = _fingerprints(actors, timeout_s)
    keep = [a for a, fp in zip(actors, theirs, strict=True) if fp == mine]
    stale = [fp for fp in theirs if fp != mine]
    for actor, fp in zip(actors, theirs, strict=True):
        if fp != mine:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
    if not stale:
        return keep, ""
    seen = ", ".join(sorted({fp or "none" for fp in stale}))
    why = (
        f"warm ranks started before tinyexp changed: not used; {len(stale)} of "
        f"{len(actors)} taken had code fingerprint {seen}, this run has {mine}: the run "
        "starts its own ranks for them and the pool replaces them"
    )
    if None in stale:
        why += " (no fingerprint: a pool older than this check, renewed by `ray down`)"
    return keep, why


def _fingerprints(actors: list[Any], timeout_s: float) -> list[str | None]:
    """Each rank's `code_fingerprint`, None where it cannot say in `timeout_s`."""
    import ray

    refs: list[Any] = []
    for actor in actors:
        try:
            refs.append(actor.code_fingerprint.remote())
        except AttributeError:  # a rank class from before fingerprints
            refs.append(None)
    asked = [ref for ref in refs if ref is not None]
    done, _ = ray.wait(asked, num_returns=len(asked), timeout=timeout_s) if asked else ([], [])
    found: list[str | None] = []
    for ref in refs:
        fp = None
        if ref is not None and ref in done:
            with contextlib.suppress(Exception):
                fp = ray.get(ref)
        found.append(fp if isinstance(fp, str) else None)
    return found


def warm_up(preimports: tuple[str, ...]) -> int:
    """What a warm rank does when it starts: its code fingerprint (of the tinyexp modules it
    just imported, before anything can change on disk), malloc settings, then the imports."""
    code_fingerprint()
    steady_malloc()
    _preimport(preimports)
    return os.getpid()
