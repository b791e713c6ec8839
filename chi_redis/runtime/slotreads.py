"""A consumer's read of its streams on a Redis Cluster (docs/design.md §3.4).

One ``XREADGROUP`` names every stream of a subscription on a single node; on a cluster the
streams of different slots cannot share a command, so the read is one ``XREADGROUP`` per
slot in the same pipeline (redis-py sends each to its master, all before reading any
reply), each blocking at most :data:`CLUSTER_BLOCK_MS` when there are several: an entry on
one master waits at most that long behind an empty read on another.
"""

from __future__ import annotations

from typing import Any

from redis.cluster import ClusterPipeline

from ..backend.cluster import group_by_slot

__all__ = ["CLUSTER_BLOCK_MS", "queue_reads"]

#: The longest block of each per-slot read when a consumer reads several slots.
CLUSTER_BLOCK_MS = 100


def queue_reads(
    pipe: Any, group: str, consumer: str, streams: list[str], count: int, block: int | None,
) -> Any:
    """Queue the read of ``streams`` on ``pipe``; what to ``execute()``: its replies end with
    one read reply (``[[stream, entries], ...]`` or the first error)."""
    if not isinstance(pipe, ClusterPipeline):
        pipe.xreadgroup(group, consumer, dict.fromkeys(streams, ">"), count=count, block=block)
        return pipe
    slots = group_by_slot(streams)
    if len(slots) > 1 and block is not None:
        block = min(block, CLUSTER_BLOCK_MS)
    for names in slots:
        pipe.xreadgroup(group, consumer, dict.fromkeys(names, ">"), count=count, block=block)
    return _MergedReads(pipe, len(slots))


class _MergedReads:
    """A pipeline whose last ``n`` replies (one read per slot) come back as one."""

    def __init__(self, pipe: Any, n: int) -> None:
        self.pipe = pipe
        self.n = n

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        results = self.pipe.execute(raise_on_error=raise_on_error)
        head, reads = results[: len(results) - self.n], results[len(results) - self.n :]
        merged: Any = []
        for r in reads:
            if isinstance(r, Exception):
                merged = r
                break
            merged += r or []
        return [*head, merged]
