"""Ranks tune glibc malloc (`tinyexp_core.launchers.runtime.steady_malloc`): a conv net's
step in a thread (where a Ray rank trains) stops faulting its activations back in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.core.distributed_exps import MallocExp
from tinyexp_core.config import build_exp
from tinyexp_core.launchers import launch_local

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"
)

# Steps of the MNIST example's network in a thread; prints page faults per step.
LOOP = """
import resource, sys, threading, torch, torch.nn.functional as F
from tinyexp_core.examples.nets import Net
from tinyexp_core.launchers.runtime import steady_malloc
torch.set_num_threads(1)
tuned = steady_malloc() if sys.argv[1] == "tune" else False
def loop():
    torch.manual_seed(0)
    model = Net(10, 1, 0.25); opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    def step():
        loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
thread = threading.Thread(target=loop); thread.start(); thread.join()
"""


def _faults_per_step(mode: str, **env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", LOOP, mode],
        env={**clean, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    return out[0], float(out[1])


def test_tuned_steps_in_a_thread_stop_faulting_memory_in():
    tuned, faults = _faults_per_step("tune")
    untuned_flag, untuned = _faults_per_step("plain")
    assert (tuned, untuned_flag) == ("True", "False")
    # Measured here: ~20 vs ~3,700 faults per step (each activation block faulted back in).
    assert faults * 10 < untuned, (faults, untuned)


def test_a_malloc_setting_in_the_environment_is_left_alone():
    assert _faults_per_step("tune", MALLOC_TRIM_THRESHOLD_="131072")[0] == "False"


def test_local_launcher_ranks_are_tuned():
    results = launch_local(build_exp(MallocExp, ["num_workers=2"]))
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["steady"] for r in results)
