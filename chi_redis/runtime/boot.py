"""What a worker process does once at boot, before its consumers start.

``ServerSettingsCheck`` logs a WARNING when the Redis server is not set up to keep events:
``maxmemory-policy`` other than ``noeviction`` (Redis may evict streams and their consumer
groups) or ``appendonly no`` (a restart loses everything since the last snapshot); the same
findings as ``chi-redis doctor``, read from ``INFO`` (allowed where ``CONFIG`` is not).

``FreezeHeapAtBoot``: keeps Python's full garbage collections short in a worker process.

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
import logging
from typing import Any

import dramatiq
import redis.exceptions as rex

__all__ = ["FreezeHeapAtBoot", "ServerSettingsCheck", "server_warnings"]

logger = logging.getLogger(__name__)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def server_warnings(client: Any) -> list[str]:
    """What about the server's persistence and eviction settings puts events at risk."""
    info = client.info("persistence") | client.info("memory")
    out = []
    policy = _s(info.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        out.append(
            f"Redis maxmemory-policy is {policy}, not noeviction: at maxmemory Redis may evict"
            " streams and their consumer groups (events lost); run `chi-redis doctor`"
        )
    if not int(info.get("aof_enabled", 0)):
        out.append(
            "Redis appendonly is no: a restart loses every event since the last snapshot;"
            " set appendonly yes (appendfsync everysec); run `chi-redis doctor`"
        )
    return out


class ServerSettingsCheck(dramatiq.Middleware):
    """Log :func:`server_warnings` once when the Worker boots (never stops it)."""

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        try:
            warnings = server_warnings(broker.client)
        except rex.RedisError as exc:  # INFO forbidden, or Redis down: the consumers will say
            logger.debug("server settings not checked: %s", type(exc).__name__)
            return
        for text in warnings:
            logger.warning("%s", text)


class FreezeHeapAtBoot(dramatiq.Middleware):
    """Collect once and :func:`gc.freeze` the heap before the Worker starts consuming."""

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        gc.collect()
        gc.freeze()
