"""The embedded Redis's lifetime: an idle watcher that stops it, and holders that keep it.

`EmbeddedRedis` starts one watcher per server it starts (`python -m
tinyexp_core.services.redis_idle ROOT --pid PID --idle-stop-s S`, detached). The watcher keeps
one connection of its own and polls the server; the server is busy while any of these holds:

- another client is connected, or one connected since the last poll (short-lived sensor
  ticks and CLI reads count through Redis's `total_connections_received`);
- a run is in flight (`tinyexp:runs:active` is not empty);
- a holder lives: a long-lived process (`make dev`, `dagster dev`) that registered itself with
  `add_holder` under `<storage_root>/redis/holders/`.

After `TINYEXP_REDIS_IDLE_STOP_S` seconds (default 600) without being busy, or as soon as the
holder that started the server has exited and nothing else uses it, the watcher shuts the
server down and removes its address and password files. It only ever watches the server it
was started for (same pid in the pid file): a configured Redis URL never has a watcher.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis
from loguru import logger

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.files import atomic_write_text
from tinyexp_core.progress import ACTIVE_RUNS_KEY
from tinyexp_core.services.embedded_redis import EmbeddedRedis
from tinyexp_core.services.lifecycle import ENV_IDLE_STOP_S, kill_pid, pid_alive
from tinyexp_core.services.redis_client import classify_redis_error, make_client
from tinyexp_core.services.redis_process import is_redis_process

WATCHER_NAME = "tinyexp-idle-watch"
_MAX_POLL_S = 1.0


# ---------------------------------------------------------------- holders


@dataclass(frozen=True)
class Holder:
    """A process that keeps the embedded Redis up while it lives."""

    pid: int
    create_time: float  # psutil's, to tell the holder from a later process with its pid
    started: bool  # it started the server: the server stops when it exits

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return (
                abs(proc.create_time() - self.create_time) < 1e-3
                and proc.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False


def add_holder(holders_dir: Path, pid: int, *, started: bool) -> Holder:
    """Register process `pid` as a holder. A live registration already there is kept, and
    only ever upgraded to `started` (a reloaded code server, or a second process of the same
    `dagster dev` that found the server, must not turn "started it" into "found it")."""
    existing = read_holders(holders_dir).get(pid)
    if existing is not None and existing.alive() and (existing.started or not started):
        return existing
    holder = Holder(pid, psutil.Process(pid).create_time(), started)
    holders_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_text(holders_dir / str(pid), json.dumps(holder.__dict__), mode=0o600)
    return holder


def read_holders(holders_dir: Path) -> dict[int, Holder]:
    """Registered holders by pid (alive or not)."""
    holders: dict[int, Holder] = {}
    try:
        paths = list(holders_dir.iterdir())
    except OSError:
        return holders
    for path in paths:
        try:
            holder = Holder(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # half-written or foreign: not a holder
        holders[holder.pid] = holder
    return holders


# ---------------------------------------------------------------- the watcher


class _Watch:
    """State of one watcher: what it saw at the last poll."""

    def __init__(self, root: Path, pid: int, idle_s: float) -> None:
        self.server = EmbeddedRedis(root)
        self.pid = pid
        self.idle_s = idle_s
        self.poll_s = min(_MAX_POLL_S, max(0.05, idle_s / 5))
        self.connections: int | None = None
        self.owner_left = False

    def busy_reason(self, client: redis.Redis) -> str:
        """Why the server counts as used now ("" when idle)."""
        info = client.info()
        connections = int(info["total_connections_received"])
        new = self.connections is not None and connections != self.connections
        self.connections = connections
        if int(info["connected_clients"]) > 1:
            return "a client is connected"
        if new:
            return "a client connected"
        if client.scard(ACTIVE_RUNS_KEY):
            return "a run is active"
        if self._live_holders():
            return "a holder lives"
        return ""

    def _live_holders(self) -> list[Holder]:
        live = []
        for holder in read_holders(self.server.holders_dir).values():
            if holder.alive():
                live.append(holder)
                continue
            self.owner_left |= holder.started
            (self.server.holders_dir / str(holder.pid)).unlink(missing_ok=True)
        return live

    def run(self) -> str:
        """Poll until the server must stop (returns why) or is gone (returns "")."""
        url, recorded = self.server._read_state()
        if url is None or recorded != self.pid:
            return ""  # another server, or none: not ours to watch
        client = make_client(url, socket_timeout_s=2.0, connect_timeout_s=2.0)
        with contextlib.suppress(redis.RedisError, OSError):
            client.client_setname(WATCHER_NAME)  # only a label in CLIENT LIST
        last_busy = time.monotonic()
        while True:
            time.sleep(self.poll_s)
            if not pid_alive(self.pid):
                return ""
            try:
                reason = self.busy_reason(client)
            except (redis.RedisError, OSError, KeyError, ValueError) as err:
                if classify_redis_error(err) == "auth":
                    return ""  # the password changed: a new server, not the one we watch
                reason = f"no answer ({type(err).__name__})"  # loading or busy: wait
            now = time.monotonic()
            if self.owner_left and reason in ("", "a client connected", "a holder lives"):
                if not self._live_holders():
                    return "the process that started it (make dev / dagster dev) exited"
            if reason:
                last_busy = now
            elif now - last_busy >= self.idle_s:
                return f"idle for {self.idle_s:g} s ({ENV_IDLE_STOP_S})"

    def stop(self, why: str) -> None:
        if self.server.state_dir.is_dir():
            stopped = self.server.stop(only_pid=self.pid)
        else:
            stopped = False  # the storage root was removed: nothing to tidy, just end it
            if is_redis_process(self.pid):
                kill_pid(self.pid)
                stopped = True
        if stopped:
            shown = self.server.state_dir
            logger.info("stopped the embedded Redis {} (pid {}): {}", shown, self.pid, why)


def watch(root: str | Path, pid: int, idle_s: float) -> None:
    """Watch the embedded Redis of `root` (server `pid`) and stop it when unused."""
    state = _Watch(Path(root), pid, idle_s)
    why = state.run()
    if why:
        state.stop(why)
    else:
        # The server ended on its own (stop(), a crash): drop state that still names it.
        if not pid_alive(pid):
            state.server.stop(only_pid=pid)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tinyexp_core.services.redis_idle ROOT --pid PID --idle-stop-s S`."""
    parser = argparse.ArgumentParser(prog="python -m tinyexp_core.services.redis_idle")
    parser.add_argument("storage_root")
    parser.add_argument("--pid", type=int, required=True, help="the redis-server to watch")
    parser.add_argument("--idle-stop-s", type=float, required=True)
    args = parser.parse_args(argv)
    if not 0 < args.idle_stop_s < math.inf:
        raise ConfigValueError("--idle-stop-s", args.idle_stop_s, "a finite number > 0")
    watch(args.storage_root, args.pid, args.idle_stop_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
