"""``FreezeHeapAtBoot``: keeps Python's full garbage collections short in a worker process.

A full (generation 2) collection walks every tracked object of the process: in a worker that
is tens of thousands of module, class and function objects loaded at boot, and one such
collection stalls every thread of the process for tens of milliseconds — at 1,000 events/s
that one pause is the latency p99 (docs/benchmarks.md).  When the Worker boots (its handler
modules imported, before its consumers start), this middleware collects once and moves what
survived to the permanent generation
(:func:`gc.freeze`): later collections only walk objects made since, and the boot-time
objects are still freed by reference counting as ever.  ``chi_redis.worker`` installs it;
in-process Workers (tests, embedded) do not get it.
"""

from __future__ import annotations

import gc
from typing import Any

import dramatiq

__all__ = ["FreezeHeapAtBoot"]


class FreezeHeapAtBoot(dramatiq.Middleware):
    """Collect once and :func:`gc.freeze` the heap before the Worker starts consuming."""

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        gc.collect()
        gc.freeze()
