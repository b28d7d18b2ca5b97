"""Core pieces behind TinyExp 0.0.1 compatibility (tests/compat runs 0.0.1's own code)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from tinyexp_core import RedisCfgMixin, RedisClusterManager, TinyExp
from tinyexp_core.config.exceptions import (
    ConfigValueError,
    RedisClusterConfigError,
    UnknownConfigurationKeyError,
)
from tinyexp_core.config.factory import build_exp
from tinyexp_core.launchers.runtime import forward_stdout


def test_structured_config_has_a_hydra_key_that_is_never_configured() -> None:
    exp = build_exp(TinyExp, ["seed=3"])
    cfg = OmegaConf.to_container(OmegaConf.structured(exp), resolve=True)
    assert cfg["hydra"] == {}
    del cfg["hydra"]  # what 0.0.1 experiments do before logging their config
    assert "hydra" not in exp.config_yaml()
    with pytest.raises(UnknownConfigurationKeyError):
        build_exp(TinyExp, ["hydra.run.dir=/tmp/x"])


def test_cluster_manager_accepts_0_0_1_memory_in_gb() -> None:
    manager = RedisClusterManager(ports=[7000, 7001], max_memory_per_port=0.1)
    assert manager.max_memory_per_port_bytes == int(0.1 * 1024**3)
    assert manager.max_memory_mb == 103  # 102.4 MiB, rounded up for redis.conf
    ours = RedisClusterManager(ports=[7000], max_memory_mb=64)
    assert ours.max_memory_per_port_gb == 64 / 1024
    with pytest.raises(RedisClusterConfigError, match="ports must not be empty") as info:
        RedisClusterManager(max_memory_per_port=1.0)
    assert isinstance(info.value, ConfigValueError) and info.value.key == "ports"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["redis_cache_cfg.redis_cache_shard_ports=[]"], "redis_cache_shard_ports"),
        (["redis_cache_cfg.redis_cache_max_memory=1"], "redis_cache_max_memory"),
    ],
)
def test_redis_cache_cfg_is_checked_at_build_time(overrides: list[str], key: str) -> None:
    @dataclass(repr=False)
    class CacheExp(TinyExp, RedisCfgMixin):
        pass

    with pytest.raises(ConfigValueError) as info:
        build_exp(CacheExp, overrides)
    assert info.value.key == f"redis_cache_cfg.{key}"
    assert build_exp(CacheExp, ["redis_cache_cfg.redis_cache_enabled=false", *overrides])


def test_forward_stdout_hands_over_whole_lines() -> None:
    lines: list[str] = []
    saved = sys.stdout
    with forward_stdout(lines.append):
        print("first", end="")
        print(" line")
        sys.stdout.write("second\nthird")
    assert sys.stdout is saved
    assert lines == ["first line", "second", "third"]
    with forward_stdout(None):
        assert sys.stdout is saved


def test_forwarded_lines_stay_in_the_process_that_set_the_forwarder(tmp_path) -> None:
    import multiprocessing

    from tinyexp_core.launchers.runtime import get_log_forwarder, set_log_forwarder

    sink = tmp_path / "lines.txt"  # a file, so a forked child's calls would show up here

    def append(line: str) -> None:
        with sink.open("a") as fh:
            fh.write(line + "\n")

    set_log_forwarder(append)
    try:
        forward = get_log_forwarder()
        forward("parent")
        child = multiprocessing.get_context("fork").Process(target=forward, args=("child",))
        child.start()
        child.join(timeout=30)
        assert child.exitcode == 0
    finally:
        set_log_forwarder(None)
    assert sink.read_text().splitlines() == ["parent"]
