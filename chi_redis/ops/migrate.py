"""``chi-redis migrate``: move data of the earlier key layout into the current one.

The earlier layout kept one id hash for every topic (``<ns>:ids``); the current one keeps
one per topic (``<ns>:{<topic>}:ids``), in the topic's hash slot, so the publish script
writes it on a Redis Cluster too (docs/design.md §3.4).  Everything else kept its name.
Until this runs, ``load(id)``, ``delete(id)`` and a retried publish do not find the events
written before the upgrade by id (their streams, time queries and subscriptions are
unaffected).  Safe to run again and while publishers run: each id is written to its
topic's hash before it is removed from the old one.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = ["MigrateResult", "migrate_ids"]


class MigrateResult(msgspec.Struct):
    """What :func:`migrate_ids` moved."""

    moved: int = 0
    topics: list[str] = msgspec.field(default_factory=list)
    unreadable: int = 0  # entries whose value is not ``<topic> <stream id>`` (left in place)

    def describe(self, legacy: str) -> str:
        if not self.moved and not self.unreadable:
            return f"nothing to migrate: {legacy} is empty or gone"
        text = f"moved {self.moved} event ids of {len(self.topics)} topics out of {legacy}"
        if self.unreadable:
            text += f"; {self.unreadable} unreadable entries left there"
        return text


def migrate_ids(bus: EventBus, batch: int = 1000) -> MigrateResult:
    """Move every entry of the old id hash into its topic's id hash (HSCAN, per batch one
    pipelined round trip that writes the per-topic entries, then one that removes them)."""
    legacy = bus.keys.legacy_ids()
    result = MigrateResult()
    topics: set[str] = set()
    cursor = 0
    while True:
        cursor, items = bus.call(lambda c=cursor: bus.client.hscan(legacy, c, count=batch))
        by_topic: dict[str, dict[bytes, bytes]] = defaultdict(dict)
        for event_id, value in items.items():
            topic, sep, _ = value.decode(errors="replace").partition(" ")
            if not sep or not topic:
                result.unreadable += 1
                continue
            by_topic[topic][event_id] = value
        if by_topic:
            _move(bus, legacy, by_topic)
            result.moved += sum(len(v) for v in by_topic.values())
            topics.update(by_topic)
        if not cursor:
            break
    result.topics = sorted(topics)
    return result


def _move(bus: EventBus, legacy: str, by_topic: dict[str, dict[bytes, bytes]]) -> None:
    def write() -> Any:
        pipe = bus.client.pipeline(transaction=False)
        pipe.sadd(bus.keys.topics(), *by_topic)
        for topic, mapping in by_topic.items():
            pipe.hset(bus.keys.ids(topic), mapping=mapping)  # type: ignore[arg-type]
        return pipe.execute()

    bus.call(write)
    moved = [event_id for mapping in by_topic.values() for event_id in mapping]
    bus.call(lambda: bus.client.hdel(legacy, *moved))
