"""The driver's Ray session: reuse a connected Ray, connect to an address, or start a local
Ray on 127.0.0.1 (loopback only) that is stopped when the session ends. Inside
`kept_connection` (a process that runs one run after another: a sweep's trial worker), a
connection to a running Ray outlives its session, for the next one."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from tinyexp_core.config.exceptions import RayConnectionError
from tinyexp_core.timing import mark

ENV_RAY_ADDRESS = "RAY_ADDRESS"
LOCAL_RAY = "local"  # an address: a local Ray started for this run and stopped after it
LOCAL_HOST = "127.0.0.1"
_ENV_RAY_CLUSTERS = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local node is 127.0.0.1
# While `kept_connection` is open: "on", and "address" once a session kept its connection.
_kept: dict[str, str] = {}


def _check_reachable(address: str, timeout_s: float) -> None:
    """Fail in seconds, not minutes, when a Ray address does not answer."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayConnectionError(address, "expected host:port, ray://host:port or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise RayConnectionError(address, f"{type(err).__name__}: {err}") from None


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make the local Ray that ray.init starts register as 127.0.0.1 and listen on loopback.

    On Linux Ray replaces a requested 127.0.0.1 by the host's routable IP and then binds its
    servers (GCS, raylet, agents, workers) to every interface; with the node IP 127.0.0.1
    they bind to loopback only. Ray reads the switch from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    when it is imported (so the constant is set too); the processes ray.init starts
    inherit the variable, and the workers the raylet starts later inherit it from it.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(_ENV_RAY_CLUSTERS)
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_ENV_RAY_CLUSTERS] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(_ENV_RAY_CLUSTERS, None)
        else:
            os.environ[_ENV_RAY_CLUSTERS] = saved_env


@contextlib.contextmanager
def ray_session(address: str = "", *, connect_timeout_s: float = 10.0) -> Iterator[bool]:
    """Reuse a connected Ray, connect to `address`, or start a local one; yields `owned`.

    Only a session opened here is shut down on exit. `address` "" or `local`: a local Ray
    started here (and so stopped on exit).
    """
    import ray

    if ray.is_initialized():
        yield False
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address and address != LOCAL_RAY:
        _check_reachable(address, connect_timeout_s)
        try:
            if _is_loopback(address) and not _answers_beyond_loopback(address):
                _connect_loopback(address)
            else:
                ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except Exception as err:
            raise RayConnectionError(address, f"{type(err).__name__}: {err}") from None
    else:
        saved = os.environ.pop(ENV_RAY_ADDRESS, None)
        try:
            # address="local": always a fresh local instance, never a `ray start` head
            # that happens to run on this machine.
            with _loopback_only():
                ray.init(
                    address="local",
                    _node_ip_address=LOCAL_HOST,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="WARNING",
                    object_store_memory=256 * 1024 * 1024,
                )
        finally:
            if saved is not None:
                os.environ[ENV_RAY_ADDRESS] = saved
    mark("ray_ready")
    # A Ray started here (`local`) is this run's alone: stopped at its end, kept or not.
    keep = "on" in _kept and bool(address) and address != LOCAL_RAY
    try:
        yield True
    finally:
        if keep:
            _kept["address"] = address
        else:
            ray.shutdown()


@contextlib.contextmanager
def kept_connection() -> Iterator[None]:
    """Within it, a session that joins a running Ray (an address, not `local`) leaves this
    process connected when it ends: the next session reuses the connection (`ray_session`
    finds it) instead of paying a connect per run. The kept connection ends here."""
    _kept["on"] = "on"
    try:
        yield
    finally:
        kept = _kept.pop("address", "")
        _kept.clear()
        if kept:
            import ray

            ray.shutdown()


def kept_address() -> str:
    """The address of the connection `kept_connection` keeps open, "" when none is kept."""
    return _kept.get("address", "")


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rpartition(":")[0]
    return host in (LOCAL_HOST, "localhost")


def _answers_beyond_loopback(address: str) -> bool:
    """Whether the Ray at a loopback `address` also answers at this host's routable IP, as
    a `ray start` head does (its node is registered under that IP, so a plain connect
    works); a Ray started in loopback mode (`ray up`) answers on 127.0.0.1 only."""
    from ray.util import get_node_ip_address

    ip = get_node_ip_address()
    port = int(address.rpartition(":")[2])
    if ip == LOCAL_HOST:
        return False
    try:
        with socket.create_connection((ip, port), timeout=1.0):
            return True
    except OSError:
        return False


def _connect_loopback(address: str) -> None:
    """Join a Ray that runs on this machine's loopback (`tinyexp-dagster ray up`).

    That Ray registered its node as 127.0.0.1 (`_loopback_only`), so this driver must too,
    or it looks for a raylet at the host's routable IP. A local Ray started by `ray.init`
    uses token authentication with the user's token file; Ray turns it on for `auto`
    addresses only, so do as it does there when a token is available.
    """
    import ray

    with _loopback_only():
        with contextlib.suppress(ImportError):  # a Ray without token authentication
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        ray.init(
            address=address,
            _node_ip_address=LOCAL_HOST,
            log_to_driver=False,
            logging_level="WARNING",
        )
