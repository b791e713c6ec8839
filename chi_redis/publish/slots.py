"""What the publishers do about hash slots (docs/design.md §3.4): a cluster runs each
publish script on one topic's keys, and the topics set is written outside the scripts."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..backend.keys import Keys
from ..backend.partitions import PartitionRegistry
from ..events.event import Event

__all__ = ["CLUSTER_CALLS_PER_ROUND_TRIP", "TopicMemory", "id_lookups", "register_partitioned",
           "route", "topic_runs"]

#: Script calls sent per pipeline round trip on a cluster (one topic each, so often small).
CLUSTER_CALLS_PER_ROUND_TRIP = 200
#: Topics a publisher remembers as registered before it starts afresh.
_MAX_REGISTERED = 10_000
#: Seconds after which a publisher adds its topics to the topics set again.
REFRESH_S = 60.0


def topic_runs(
    events: Sequence[Event], chunk_size: int, names: Sequence[str] | None = None
) -> Iterator[tuple[int, int]]:
    """``events`` cut into runs of one topic (of one name of ``names``: a partition), each
    at most ``chunk_size`` long, in order, as ``(start, stop)``: their stream ids,
    concatenated, are in the events' order."""
    of = names if names is not None else [e.topic for e in events]
    start = 0
    for i in range(1, len(events) + 1):
        if i == len(events) or of[i] != of[start] or i - start == chunk_size:
            yield start, i
            start = i


class TopicMemory:
    """The topics a publisher added to the topics set lately: it adds each again once
    every :data:`REFRESH_S` (one SADD a topic a minute), so a set that was deleted (a
    FLUSH, a restore) is whole again within a minute of publishing."""

    __slots__ = ("known", "until")

    def __init__(self) -> None:
        self.known: set[str] = set()
        self.until = 0.0

    def knows(self, topic: str) -> bool:
        """Whether ``topic`` was added lately (one clock read and a set lookup)."""
        now = time.monotonic()
        if now >= self.until or len(self.known) > _MAX_REGISTERED:
            self.known.clear()
            self.until = now + REFRESH_S
        return topic in self.known

    def fresh(self, topics: Iterable[str]) -> list[str]:
        """The topics of ``topics`` not added lately."""
        return sorted({t for t in topics if not self.knows(t)})

    def add(self, topics: Iterable[str]) -> None:
        self.known.update(topics)


def route(registry: PartitionRegistry, events: Sequence[Event]) -> list[str] | None:
    """The partition each event goes to (``orders/3``), its topic for the others; None when
    no topic of ``events`` is partitioned (docs/design.md §15).  From the registry's cache
    only (no I/O): the writer routes a topic not registered lately again after
    :func:`register_partitioned`."""
    out: list[str] | None = None
    for i, event in enumerate(events):
        if not isinstance(event, Event):
            continue  # refused by the packing, before anything is sent
        decl = registry.cached(event.topic)
        if decl is not None:
            if out is None:
                out = [getattr(e, "topic", "") for e in events]
            out[i] = decl.part(event.topic, event)
    return out


def register_partitioned(
    client: Any, keys: Keys, registry: PartitionRegistry, fresh: list[str]
) -> list[str]:
    """Add ``fresh`` to the topics set and read their partitioning, one round trip; the
    ones that are partitioned (raises ConfigError when one disagrees with this process's
    configuration)."""
    pipe = client.pipeline(transaction=False)
    pipe.sadd(keys.topics(), *fresh)
    pipe.hmget(keys.partitions(), fresh)
    raws = pipe.execute()[1]
    return registry.learn(dict(zip(fresh, raws, strict=True)))


def id_lookups(
    pipe: Any, keys: Keys, events: Sequence[Event], names: Sequence[str] | None = None
) -> Any:
    """Queue ``HGET <topic's ids> <id>`` for each event on ``pipe`` (the ids of its name in
    ``names``, when given: its partition); the pipeline."""
    for i, event in enumerate(events):
        pipe.hget(keys.ids(names[i] if names is not None else event.topic), event.id)
    return pipe
