"""A process that loaded the pipelines ends without a last sweep of its whole heap.

When Python exits it runs its cyclic garbage collector over every object still alive:
after `import dagster`, the definitions, torch (the dataset step) and ray (the training
step), that is millions of objects, and on this project's 2-core test machine it was the
larger part of `dagster job execute`'s 2 s between the run's end and the process's exit
(py-spy --native: 135 of 150 samples in `gc_collect_main` during finalization). The objects
are freed with the process anyway. So an exit handler registered when this package is
imported (handlers run last-registered first: after Ray's, Dagster's and the run's own)
moves every object to the collector's permanent generation (`gc.freeze()`), which those
last collections skip. Objects are still released as the interpreter tears its modules
down; only the `__del__` of objects in unreachable reference cycles may not run at exit,
which Python never promised.
"""

from __future__ import annotations

import atexit
import gc

_installed: list[bool] = []


def install() -> None:
    """Register the exit handler once per process."""
    if not _installed:
        atexit.register(gc.freeze)
        _installed.append(True)
