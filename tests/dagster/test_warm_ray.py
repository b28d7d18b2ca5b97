"""The local Ray that outlives runs (`tinyexp-dagster ray up` / `down` / `status`, and the
default local Ray a run starts when none runs): a run on the same storage root joins it
instead of starting a Ray, takes a warm rank from its pool, and leaves it running; `down`
leaves no Ray process (warm ranks included); the default one stops itself after
`TINYEXP_RAY_IDLE_STOP_S` without runs; `ray_address=local` starts and stops a Ray per run;
a stale record is replaced by a new head."""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tinyexp_core.services.lifecycle import free_port
from tinyexp_core.services.ray_head import address_file, live_head_address, read_head
from tinyexp_dagster import cli
from tinyexp_dagster.resources import RayDDPResource

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
RAY_DAEMONS = ("raylet", "gcs_server")

# A fresh process running one Ray job the way a Dagster run does (the resource picks the
# address, the launcher runs): reports the address used and the Ray daemons under it.
_RUN_PROBE = """
import json, sys
import psutil, ray
from tinyexp_core.config.factory import build_exp
from tinyexp_core.launchers.ray import RayLauncher, RayLaunchSpec
from tinyexp_dagster.resources import RayDDPResource

log = []
address = RayDDPResource(address=sys.argv[2] if len(sys.argv) > 2 else None).run_address(
    sys.argv[1], log=log.append)
seen = {}

def own(proc):  # started by this process, not by a Ray head's holder it spawned
    return not any("tinyexp_core.services.ray_head" in a.cmdline() for a in proc.parents())

def started(_):
    seen["gcs"] = ray.get_runtime_context().gcs_address
    seen["own_daemons"] = [p.name() for p in psutil.Process().children(recursive=True)
                           if p.name() in ("raylet", "gcs_server") and own(p)]

launcher = RayLauncher(RayLaunchSpec(num_workers=1, address=address))
launcher.on_started = started
result = launcher.run(build_exp("tinyexp_core.examples.pi_exp:Exp", []))
print(json.dumps({"address": address, "log": log, **seen, "world_size": result[0]["world_size"],
                  "warm_ranks": launcher.warm_ranks}))
"""


def ray_cli(root: Path, *args: str) -> int:
    return cli.main(["--storage-root", str(root), "ray", *args])


def name_of(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:  # Ray's idle workers come and go
        return ""


def listening_ips(proc: psutil.Process) -> list[str]:
    try:
        conns = proc.net_connections(kind="inet")
    except psutil.Error:
        return []
    return [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN]


def subtree(pid: int) -> list[psutil.Process]:
    holder = psutil.Process(pid)
    return [holder, *holder.children(recursive=True)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_up_is_reused_by_runs_and_down_leaves_no_ray_process(tmp_path, capsys):
    root = tmp_path / "root"
    assert ray_cli(root, "up", "--num-cpus", "2") == 0
    head = read_head(root)
    try:
        assert head is not None and head.address.startswith("127.0.0.1:")
        assert ray_cli(root, "up") == 0, "a second up reuses the running head"
        assert "already running" in capsys.readouterr().out
        assert read_head(root) == head
        assert ray_cli(root, "status") == 0
        procs = subtree(head.pid)
        daemons = [p for p in procs if name_of(p) in RAY_DAEMONS]
        assert sorted(name_of(p) for p in daemons) == sorted(RAY_DAEMONS), procs
        listening = [(name_of(p), ip) for p in procs for ip in listening_ips(p)]
        assert listening and all(ip in LOOPBACK for _, ip in listening), listening

        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        for _ in range(2):  # two runs in a row: the head outlives each
            proc = subprocess.run(
                [sys.executable, "-c", _RUN_PROBE, str(root)],
                capture_output=True,
                text=True,
                timeout=200,
                cwd=REPO_ROOT,
                env=env,
            )
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            report = json.loads(proc.stdout.strip().splitlines()[-1])
            assert report["address"] == head.address and report["gcs"] == head.address
            assert "warm start" in report["log"][0]
            assert report["own_daemons"] == [], "the run started a Ray of its own"
            assert report["world_size"] == 1
            assert report["warm_ranks"] == 1, "the rank came from the pool of warm ranks"
            assert all(p.is_running() for p in daemons), "the run stopped the running Ray"
        status = subprocess.run(  # a fresh process, as from a terminal
            [sys.executable, "-m", "tinyexp_dagster.cli", "--storage-root", str(root), "ray",
             "status"],
            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr[-2000:]
        assert "warm ranks: " in status.stdout and "(keeps 2)" in status.stdout, status.stdout
    finally:
        procs = subtree(head.pid)  # with the warm ranks started since
        assert ray_cli(root, "down") == 0
    gone, alive = psutil.wait_procs(procs, timeout=30)
    assert alive == [], [name_of(p) for p in alive]
    assert not address_file(root).exists()
    assert ray_cli(root, "status") == 1
    assert ray_cli(root, "down") == 0  # nothing recorded: still fine


def test_up_refuses_a_negative_warm_rank_count(tmp_path, capsys):
    assert ray_cli(tmp_path / "root", "up", "--warm-ranks", "-1") == 2
    assert "--warm-ranks -1: expected an integer >= 0" in capsys.readouterr().err
    assert read_head(tmp_path / "root") is None, "nothing started"


def write_record(root: Path, pid: int) -> None:
    address_file(root).parent.mkdir(parents=True, exist_ok=True)
    record = {"address": f"127.0.0.1:{free_port()}", "pid": pid}
    address_file(root).write_text(json.dumps(record))


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def no_ray_connection(monkeypatch):
    """This process as a fresh step process: not connected to a Ray (the test session's own
    Ray, started by other tests, would otherwise be used as it is)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None:
        monkeypatch.setattr(ray, "is_initialized", lambda: False)


@pytest.mark.parametrize("holder", ["dead", "not_a_holder"])
def test_a_stale_record_is_replaced_by_a_new_head(
    tmp_path, capsys, monkeypatch, holder, no_ray_connection
):
    from tinyexp_core.services import ray_head

    root = tmp_path / "root"
    write_record(root, dead_pid() if holder == "dead" else os.getpid())
    address, why = live_head_address(root)
    assert address == "" and "is stale" in why
    fresh = ray_head.RayHead("127.0.0.1:1", 1)
    monkeypatch.setattr(ray_head, "ensure_head", lambda r: (fresh, True))
    log: list[str] = []
    assert RayDDPResource().run_address(str(root), log=log.append) == fresh.address
    assert "stale" in log[0] and "starting a new one" in log[0]
    assert "started the local Ray at 127.0.0.1:1" in log[1] and "stays warm" in log[1]
    assert ray_cli(root, "status") == 1
    assert "stale" in capsys.readouterr().out
    assert ray_cli(root, "down") == 0
    assert not address_file(root).exists(), "down removes a stale record"
    assert psutil.pid_exists(os.getpid()), "down never signals a process that is no holder"


def test_an_address_or_local_never_starts_a_head(tmp_path, monkeypatch):
    from tinyexp_core.launchers.ray_spec import RayLaunchSpec
    from tinyexp_core.services import ray_head

    def refuse(root):
        raise AssertionError("a head was started")

    monkeypatch.setattr(ray_head, "ensure_head", refuse)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    log: list[str] = []
    write_record(tmp_path, dead_pid())
    explicit = RayDDPResource(address="ray://10.0.0.1:10001")
    assert explicit.run_address(str(tmp_path), log=log.append) == "ray://10.0.0.1:10001"
    assert RayDDPResource(address="local").run_address(str(tmp_path)) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert RayDDPResource().run_address(str(tmp_path), log=log.append) == "auto"
    assert log == []
    forced = RayDDPResource().forced(address="127.0.0.1:6380")
    assert forced["ray_address"] == "127.0.0.1:6380", "the run record states the address used"
    with pytest.raises(Exception, match="CPU"):  # `local` is this machine: checked up front
        RayLaunchSpec(num_workers=4096, address="local").validate()


def test_a_bad_idle_stop_fails_before_anything_starts(tmp_path, monkeypatch, no_ray_connection):
    from tinyexp_core.config.exceptions import ConfigValueError
    from tinyexp_core.services.ray_head import ENV_IDLE_STOP_S

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(ENV_IDLE_STOP_S, "soon")
    allowed = "a finite number of seconds > 0"
    with pytest.raises(ConfigValueError, match=rf"{ENV_IDLE_STOP_S}.*soon.*{allowed}"):
        RayDDPResource().run_address(str(tmp_path / "root"))
    assert read_head(tmp_path / "root") is None


def run_probe(root: Path, env: dict[str, str], *address: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_PROBE, str(root), *address],
        capture_output=True, text=True, timeout=200, cwd=REPO_ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_default_local_ray_is_reused_and_stops_itself_when_idle(tmp_path):
    """Must-show 2 of issue 24: no `ray up`, no address. The first run starts the storage
    root's Ray and leaves it warm; the second joins it (and takes a warm rank); after the
    idle time no process of it is left. `local` meanwhile starts and stops its own."""
    from tinyexp_core.services.ray_head import ENV_IDLE_STOP_S

    # Long enough for the second run's process to start (imports on a busy 2-core machine
    # take 10 s and more) and reach the Ray before the idle stop.
    idle_s = 30.0
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[ENV_IDLE_STOP_S] = str(idle_s)

    local = run_probe(root, env, "local")
    assert local["address"] == "local" and sorted(local["own_daemons"]) == sorted(RAY_DAEMONS)
    assert read_head(root) is None, "`local` leaves no Ray behind"

    first = run_probe(root, env)
    head = read_head(root)
    assert head is not None and first["address"] == first["gcs"] == head.address
    assert "started the local Ray" in first["log"][0] and first["own_daemons"] == []
    holder = psutil.Process(head.pid)
    seen = {p.pid: p for p in subtree(head.pid)}
    assert {name_of(p) for p in seen.values()} >= set(RAY_DAEMONS)

    second = run_probe(root, env)
    assert second["address"] == second["gcs"] == head.address, "the second run reused it"
    assert "warm start" in second["log"][0] and second["own_daemons"] == []
    assert second["warm_ranks"] == 1, "its rank came from the pool of warm ranks"
    assert read_head(root) == head and holder.is_running()

    deadline = time.monotonic() + idle_s + 60
    while holder.is_running() and holder.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the idle Ray did not stop itself"
        with contextlib.suppress(psutil.Error):
            seen.update({p.pid: p for p in subtree(head.pid)})  # warm ranks refilled
        time.sleep(0.5)
    _, alive = psutil.wait_procs(list(seen.values()), timeout=30)
    assert alive == [], [(p.pid, name_of(p)) for p in alive]
    assert not address_file(root).exists()
    assert f"idle for {idle_s:g} s ({ENV_IDLE_STOP_S})" in (root / "ray" / "head.log").read_text()


@pytest.mark.parametrize("bind", ["127.0.0.1", "0.0.0.0"])
def test_a_loopback_address_is_joined_in_loopback_mode_only_when_ray_listens_there_only(bind):
    """`ray up`'s Ray listens on loopback only (its node is 127.0.0.1); a `ray start` head
    given as 127.0.0.1:port listens everywhere (its node has the routable IP): joined as
    before."""
    import socket

    from ray.util import get_node_ip_address

    from tinyexp_core.launchers.ray_session import _answers_beyond_loopback

    if bind == "0.0.0.0" and get_node_ip_address() == "127.0.0.1":
        pytest.skip("this host has no routable address")
    with socket.socket() as server:
        server.bind((bind, 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert _answers_beyond_loopback(address) is (bind == "0.0.0.0")
