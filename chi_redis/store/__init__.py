"""Event stores: the queryable event log.

:class:`EventStore` is the contract; :class:`~chi_redis.store.redis.RedisEventStore` (the
bus's own log, ``bus.store``) and :class:`~chi_redis.store.memory.MemoryEventStore` implement
it, and one contract test suite runs against both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from ..events.event import Event

__all__ = ["EventStore"]


@runtime_checkable
class EventStore(Protocol):
    """A queryable log of events.

    Contract, for every implementation:

    - ``store(event)`` archives one event (it is not delivered to subscribers) and returns
      its position id; storing an event id that is already stored writes nothing.
    - ``load(event_id)`` returns the event or ``None``.
    - ``load_by_topic(topic, offset, limit)`` returns the topic's events oldest first;
      ``offset`` counts from the oldest entry still kept, so deletes and retention shift it
      (use ``page_by_topic`` for stable paging).
    - ``load_by_time_range(start, end, topic=, types=, limit=)`` returns events whose event
      time lies in ``[start, end]`` (both inclusive, aware datetimes), across all topics when
      ``topic`` is None, ordered by (timestamp, id); ``types`` is a list of globs.
    - ``delete(event_id)`` removes the event and its index entries; True if it existed.

    Implementations are thread-safe.
    """

    def store(self, event: Event) -> str: ...

    def load(self, event_id: str) -> Event | None: ...

    def load_by_topic(self, topic: str, offset: int = 0, limit: int = 100) -> list[Event]: ...

    def page_by_topic(
        self, topic: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[Event], str | None]: ...

    def load_by_time_range(
        self,
        start: datetime,
        end: datetime,
        *,
        topic: str | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
    ) -> list[Event]: ...

    def delete(self, event_id: str) -> bool: ...
