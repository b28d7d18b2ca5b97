"""Helpers for end-to-end tests: real programs in subprocesses, waited on and cleaned up.

Every long-lived program (dagster dev, dagster-daemon, a Ray head) runs as a
`ManagedProcess`: its own session and process group, output in a log file, and a watcher
that records every descendant it ever had (Ray workers put themselves in their own
process groups, so a process-group kill alone would miss them). `stop()` ends the group
gracefully, then kills whatever recorded descendant outlived it, and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
LOG_TAIL_CHARS = 6000
T = TypeVar("T")


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (never Redis's 6379)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port != 6379:
            return port


def dagster_cmd(*args: str) -> list[str]:
    """The venv's `dagster` command line."""
    return [str(VENV_BIN / "dagster"), *args]


def daemon_cmd(*args: str) -> list[str]:
    """The venv's `dagster-daemon` command line."""
    return [str(VENV_BIN / "dagster-daemon"), *args]


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The end of a log file, for failure messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as err:
        return f"(no log at {path}: {err})"
    return text[-chars:]


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment with the venv's bin first on PATH, plus `extra`."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 2.0,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll `condition` until it returns something truthy; on timeout fail with `what` and
    whatever `context()` says (typically the tail of a program's log)."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        try:
            value = condition()
            if value:
                return value
        except AssertionError:
            raise  # a definite failure (a program exited), not "not ready yet"
        except Exception as err:  # a program not ready yet answers with errors; keep polling
            last_error = f"{type(err).__name__}: {err}"
        if time.monotonic() >= deadline:
            details = f"\nlast error: {last_error}" if last_error else ""
            extra = f"\n--- context ---\n{context()}" if context else ""
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}{details}{extra}"
            )
        time.sleep(interval_s)


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout_s: float = 480,
    log_path: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (own process group, killed whole on timeout); stdout and
    stderr together in `.stdout`, also written to `log_path`."""
    with subprocess.Popen(
        list(args),
        cwd=REPO_ROOT,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            if log_path is not None:
                log_path.write_text(output)
            raise AssertionError(
                f"`{' '.join(args)}` did not finish in {timeout_s:.0f} s; output tail:\n"
                f"{output[-LOG_TAIL_CHARS:]}"
            ) from None
    if log_path is not None:
        log_path.write_text(output)
    return subprocess.CompletedProcess(list(args), proc.returncode, output, "")


class ManagedProcess:
    """A long-running program in its own session, logging to a file, stopped in `stop()`."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        term_group: bool = True,
    ):
        self.name = name
        # False: SIGTERM the program alone and let it stop its children (`ray start --block`
        # drains through its GCS, which must still be up).
        self.term_group = term_group
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._seen: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()
        self._stop_watch = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        self.stragglers: list[str] = []  # descendants that outlived the graceful stop

    def _watch(self) -> None:
        while not self._stop_watch.is_set():
            self.snapshot()
            self._stop_watch.wait(0.5)

    def snapshot(self) -> None:
        """Record the current descendants (they may be reparented once their parent dies)."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        with self._lock:
            for child in children:
                self._seen.setdefault(child.pid, child)

    def tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return f"--- {self.name} log ({self.log_path}) ---\n{tail(self.log_path, chars)}"

    def check_alive(self) -> None:
        """Fail with the log tail if the program has exited."""
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"{self.name} exited with status {code}\n{self.tail()}")

    def alive_descendants(self) -> list[psutil.Process]:
        with self._lock:
            procs = list(self._seen.values())
        alive = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                continue
        return alive

    def stop(self, grace_s: float = 45.0) -> list[str]:
        """SIGTERM the process group, wait, SIGKILL the group, then kill recorded descendants
        that are still alive (recorded in `stragglers`). Returns the stragglers' names."""
        self.snapshot()
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    if self.term_group:
                        os.killpg(self.proc.pid, signal.SIGTERM)
                    else:
                        self.proc.terminate()
                try:
                    self.proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self.stragglers.append(f"{self.name} (pid {self.proc.pid}) ignored SIGTERM")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self._stop_watch.set()
            self._watcher.join(5)
            _, still = psutil.wait_procs(self.alive_descendants(), timeout=10)
            for proc in still:
                with contextlib.suppress(psutil.Error):
                    self.stragglers.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:160]}")
                    proc.kill()
            psutil.wait_procs(still, timeout=10)
        finally:
            self._log.close()
        return self.stragglers


def graphql(port: int, query: str, variables: Mapping[str, Any] | None = None) -> dict:
    """POST a GraphQL query to the webserver on loopback; returns `data`."""
    body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        payload = json.loads(response.read())
    if payload.get("errors"):
        raise RuntimeError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]


def server_up(port: int) -> bool:
    """True once the Dagster webserver answers `/server_info`."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run_failure_report(instance: Any, run_id: str) -> str:
    """The errors a failed run logged (step failures, run failure), for assertion messages."""
    import dagster as dg

    lines = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
            lines.append(f"{event.event_type.value} {event.step_key or ''}: {event.message}")
            data = event.event_specific_data
            failure = getattr(data, "user_failure_data", None)
            if failure is not None and failure.description:
                lines.append(f"  failure: {failure.description}")
            error = getattr(data, "error", None)
            if error is not None:
                lines.append(f"  error: {error.message.strip()}")
                lines.append(f"  stack tail: {''.join(error.stack)[-1500:]}")
    return "\n".join(lines) or "(no failure events)"


LOCATIONS_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename } } }
  }
}
"""


def location_loaded(port: int) -> bool:
    """True once every code location of the workspace is loaded; a load error fails."""
    workspace = graphql(port, LOCATIONS_QUERY)["workspaceOrError"]
    entries = workspace.get("locationEntries") or []
    for entry in entries:
        kind = (entry.get("locationOrLoadError") or {}).get("__typename")
        if kind == "PythonError":
            raise AssertionError(f"code location {entry['name']} failed to load")
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


@contextlib.contextmanager
def dagster_dev(
    env: Mapping[str, str],
    log_path: Path,
    *,
    port: int | None = None,
    startup_s: float = 300,
    workspace: str = "workspace.yaml",
) -> Iterator[tuple[ManagedProcess, int]]:
    """`dagster dev -w <workspace>` (webserver + daemon; the project's workspace.yaml by
    default) on loopback, up and its code location loaded; stopped on exit, failing if any
    descendant outlived the stop."""
    port = port or free_port()
    proc = ManagedProcess(
        "dagster dev",
        dagster_cmd("dev", "-w", workspace, "-h", "127.0.0.1", "-p", str(port)),
        env,
        log_path,
    )
    try:

        def ready() -> bool:
            proc.check_alive()
            return server_up(port) and location_loaded(port)

        wait_for(ready, timeout_s=startup_s, what=f"dagster dev on port {port}", context=proc.tail)
        yield proc, port
    finally:
        stop_warm_ray(env)
        stragglers = proc.stop()
    assert not stragglers, f"processes outlived dagster dev's shutdown: {stragglers}\n{proc.tail()}"


def stop_warm_ray(env: Mapping[str, str]) -> None:
    """Stop the storage root's default local Ray: it outlives the runs by design (warm, one
    per root, stopped after its idle time), so a test stops it before it counts leftovers,
    and what then outlives a shutdown is a leak."""
    from tinyexp_core.services.ray_head import stop_head

    root = env.get("TINYEXP_STORAGE_ROOT")
    if root and not env.get("RAY_ADDRESS"):
        stop_head(root)
