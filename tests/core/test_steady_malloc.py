"""Ranks tune glibc malloc (`tinyexp_core.launchers.runtime.steady_malloc`): a conv net's
step in a thread (where a Ray rank trains) stops faulting its activations back in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.core.distributed_exps import MallocExp
from tinyexp_core.config.factory import build_exp
from tinyexp_core.launchers import launch_local

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"
)

# The tail of both scripts below: `make_step()` (in the thread, so its allocations come
# from the thread's arena) returns a step; 5 warm-up steps, then page faults per step.
MEASURE = """
def loop():
    step = make_step()
    for _ in range(5):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
thread = threading.Thread(target=loop); thread.start(); thread.join()
"""

# Steps of the MNIST example's network in a thread.
LOOP = (
    """
import resource, sys, threading, torch, torch.nn.functional as F
from tinyexp_core.examples.nets import Net
from tinyexp_core.launchers.runtime import steady_malloc
torch.set_num_threads(1)
tuned = steady_malloc() if sys.argv[1] == "tune" else False
def make_step():
    torch.manual_seed(0)
    model = Net(10, 1, 0.25); opt = torch.optim.Adam(model.parameters())
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    def step():
        loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
    return step
"""
    + MEASURE
)


# Twelve 6 MiB blocks allocated, written and freed per step in a thread: the working set
# (72 MiB) spills past one of the thread arena's 64 MiB heaps, which glibc deletes when it
# empties unless the top pad keeps it. No torch: the same on every CPU (which kernels a
# conv net's step runs, and so its blocks, depends on the CPU).
SPILL = (
    """
import ctypes, resource, sys, threading
from tinyexp_core.launchers.runtime import steady_malloc
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
tuned = steady_malloc() if sys.argv[1] == "tune" else False
BLOCK = 6 * 1024 * 1024
def make_step():
    def step():
        blocks = [libc.malloc(BLOCK) for _ in range(12)]
        for block in blocks:
            ctypes.memset(block, 1, BLOCK)
        for block in reversed(blocks):
            libc.free(block)
    return step
"""
    + MEASURE
)


def _faults_per_step(mode: str, script: str = LOOP, **env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", script, mode],
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
    # Measured: ~20 vs ~3,700 faults per step here, vs ~1,300 on a CI machine whose kernels
    # allocate differently (each activation block faulted back in).
    assert faults * 10 < untuned, (faults, untuned)


def test_a_working_set_past_one_arena_heap_stays_in_after_the_step():
    tuned, faults = _faults_per_step("tune", SPILL)
    assert tuned == "True"
    # A step writes 18,432 pages; faulting the spilled heap in again is ~3,000 per step
    # (measured untuned here, and tuned before M_TOP_PAD was set).
    assert faults < 50, faults
    assert _faults_per_step("plain", SPILL)[1] > 1000


@pytest.mark.parametrize(
    "name", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_"]
)
def test_a_malloc_setting_in_the_environment_is_left_alone(name):
    assert _faults_per_step("tune", **{name: "131072"})[0] == "False"


def test_local_launcher_ranks_are_tuned():
    results = launch_local(build_exp(MallocExp, ["num_workers=2"]))
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["steady"] for r in results)
