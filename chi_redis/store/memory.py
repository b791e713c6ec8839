"""An in-process EventStore, for tests and single-process tools."""

from __future__ import annotations

import threading
from datetime import datetime

from ..backend.streamids import parse_id
from ..events.event import Event, _to_us
from ..events.names import validate_name
from .query import check_page, check_range, sort_key, type_matcher

__all__ = ["MemoryEventStore"]


class MemoryEventStore:
    """Keeps events in dicts; same contract as :class:`~chi_redis.store.EventStore`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, tuple[str, Event]] = {}
        self._topics: dict[str, dict[str, Event]] = {}  # topic -> position id -> event
        self._seq = 0

    def store(self, event: Event) -> str:
        with self._lock:
            known = self._by_id.get(event.id)
            if known is not None:
                return known[0]
            self._seq += 1
            pos = f"0-{self._seq}"
            self._by_id[event.id] = (pos, event)
            self._topics.setdefault(event.topic, {})[pos] = event
            return pos

    def load(self, event_id: str) -> Event | None:
        with self._lock:
            known = self._by_id.get(event_id)
            return known[1] if known else None

    def load_by_topic(self, topic: str, offset: int = 0, limit: int = 100) -> list[Event]:
        check_page(topic, offset, limit)
        with self._lock:
            return list(self._topics.get(topic, {}).values())[offset : offset + limit]

    def page_by_topic(
        self, topic: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[Event], str | None]:
        check_page(topic, 0, limit)
        with self._lock:
            items = list(self._topics.get(topic, {}).items())
        if after is not None:
            after_id = parse_id(after)
            items = [(p, e) for p, e in items if parse_id(p) > after_id]
        page = items[:limit]
        return [e for _, e in page], (page[-1][0] if page else after)

    def load_by_time_range(
        self,
        start: datetime,
        end: datetime,
        *,
        topic: str | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        lo, hi = check_range(start, end, limit)
        if topic is not None:
            validate_name(topic, "topic")
        match = type_matcher(types)
        with self._lock:
            events = [
                e
                for _, e in self._by_id.values()
                if (topic is None or e.topic == topic)
                and lo <= _to_us(e.timestamp) <= hi
                and (match is None or match(e.type))
            ]
        events.sort(key=sort_key)
        return events if limit is None else events[:limit]

    def delete(self, event_id: str) -> bool:
        with self._lock:
            known = self._by_id.pop(event_id, None)
            if known is None:
                return False
            self._topics[known[1].topic].pop(known[0], None)
            return True
