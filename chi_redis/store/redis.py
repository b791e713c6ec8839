"""The bus's own event log on Redis: topic streams, time indexes and the id lookup."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from ..backend.scripts import script
from ..backend.streamids import parse_id
from ..errors import PublishError
from ..events.event import Event
from ..events.names import validate_name
from ..events.partitioning import topic_of_part
from .eventtime import EventTimeReader, event_time_entries, flat_view
from .query import check_page, check_range, sort_key, type_matcher

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = ["RedisEventStore"]

_PAGE = 5000
#: A stream entry as Redis sends it: ``(stream id, [field, value, field, value, ...])``.
Entry = tuple[bytes, list[bytes]]


class RedisEventStore:
    """EventStore over the bus's Redis layout (docs/design.md §3); reach it as ``bus.store``.

    Thread-safe.  Entries that cannot be decoded raise :class:`~chi_redis.DecodeError`.
    """

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._keys = bus.keys
        self._page = script("page")
        self._delete = script("delete")
        self._raw = flat_view(bus.client)

    def __repr__(self) -> str:
        return f"RedisEventStore({self.bus!r})"

    def _r(self, fn: Callable[[], Any]) -> Any:
        return self.bus.call(fn)

    def _decode(self, topic: str, entries: Iterable[Entry]) -> list[Event]:
        # ``topic`` may be a partition's name (``orders/3``): its events are the topic's.
        stream = self._keys.stream(topic)
        return self.bus.codec.decode_flat_many(entries, topic=topic_of_part(topic),
                                               stream=stream)

    def _names(self, topics: Iterable[str]) -> list[str]:
        """The names ``topics``' events are filed under: each topic and, if partitioned,
        its partitions (docs/design.md §15)."""
        return [n for t in topics for n in self.bus.partitions.names(t)]

    def _xrange(
        self, stream: str, lo: str | bytes, hi: str | bytes, count: int | None = None
    ) -> list[Entry]:
        return cast(
            "list[Entry]", self._r(lambda: self._raw.xrange(stream, lo, hi, count=count))
        )

    # EventStore -----------------------------------------------------------------------
    def store(self, event: Event) -> str:
        """Archive ``event``: written to its topic's log and indexes, not delivered.

        Raises the underlying :class:`~chi_redis.RedisError` (not a one-event
        :class:`~chi_redis.PublishError`) when it was not written.
        """
        try:
            return self.bus.writer.write_batch([event], 1, archive=True)[0]
        except PublishError as exc:
            if 0 in exc.written:  # the script ran, only its reply was lost
                return exc.written[0]
            raise exc.cause from None

    def locate(self, event_id: str) -> tuple[str, str] | None:
        """``(topic, stream id)`` of an event, or None.

        Each topic keeps its own id hash (in its slot): every topic's is asked, in one
        pipelined round trip (per cluster node); a partitioned topic's events are found in
        their partition's (the topic returned is then the partition's name, ``orders/3``).
        """
        names = self._names(self.topics())
        if not names:
            return None

        def ask() -> list[Any]:
            pipe = self.bus.client.pipeline(transaction=False)
            for t in names:
                pipe.hget(self._keys.ids(t), event_id)
            return pipe.execute()

        for raw in self._r(ask):
            if raw is not None:
                topic, sid = raw.decode().split(" ", 1)
                return topic, sid
        return None

    def topics_with_entry(self, stream_id: str, topics: Iterable[str] | None = None) -> list[str]:
        """The topics (of ``topics``, default all) whose stream holds entry ``stream_id``.

        A stream id is unique within one topic only; this is how ``chi-redis events get``
        finds the event behind the stream id ``publish`` printed.  One pipelined round trip.
        """
        names = self.topics() if topics is None else [validate_name(t, "topic") for t in topics]
        if not names:
            return []

        def each() -> list[Any]:
            pipe = self.bus.client.pipeline(transaction=False)
            for t in names:
                pipe.xrange(self._keys.stream(t), stream_id, stream_id, count=1)
            return pipe.execute()

        return [t for t, found in zip(names, self._r(each), strict=True) if found]

    def load(self, event_id: str) -> Event | None:
        where = self.locate(event_id)
        if where is None:
            return None
        topic, sid = where
        entries = self._xrange(self._keys.stream(topic), sid, sid)
        return self._decode(topic, entries)[0] if entries else None

    def load_by_topic(self, topic: str, offset: int = 0, limit: int = 100) -> list[Event]:
        check_page(topic, offset, limit)
        if limit == 0:
            return []
        names = self.bus.partitions.names(topic)
        if len(names) == 1:
            keys = [self._keys.stream(topic)]
            entries = self._r(partial(self._page.run, self.bus.client, keys, [offset, limit]))
            return self._decode(topic, entries)
        # A partitioned topic: the first offset + limit of each partition, merged by
        # append time (the stream id's ms; within one ms by event time), then the page.
        merged: list[tuple[tuple[int, int, int], str, Entry]] = []
        for n in names:
            got = self._r(partial(self._page.run, self.bus.client, [self._keys.stream(n)],
                                  [0, offset + limit]))
            merged += [((parse_id(e[0])[0], _event_us(e[1]), parse_id(e[0])[1]), n, e)
                       for e in got]
        merged.sort(key=lambda m: m[0])
        return [self._decode(n, [e])[0] for _, n, e in merged[offset:offset + limit]]

    def page_by_topic(
        self, topic: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[Event], str | None]:
        """One page after the stream id ``after`` (exclusive); returns the next cursor."""
        check_page(topic, 0, limit)
        if limit == 0:  # XRANGE refuses COUNT 0
            return [], after
        lo = "-" if after is None else f"({after}"
        entries = self._xrange(self._keys.stream(topic), lo, "+", count=limit)
        cursor = entries[-1][0].decode() if entries else after
        return self._decode(topic, entries), cursor

    def topics(self) -> list[str]:
        """Every topic ever published to, sorted."""
        members = self._r(lambda: self.bus.client.smembers(self._keys.topics()))
        return sorted(m.decode() for m in members)

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
        if limit == 0 or lo > hi:
            return []
        topics = self._names([topic] if topic is not None else self.topics())
        events: list[Event] = []
        with _gc_paused():
            for t in topics:
                events.extend(self._range_topic(t, lo, hi, match, limit))
        events.sort(key=sort_key)
        return events if limit is None else events[:limit]

    def _range_topic(
        self, topic: str, lo: int, hi: int, match: Callable[[str], bool] | None, limit: int | None
    ) -> list[Event]:
        k = self._keys
        if limit is None:  # every match, sorted by the caller: no merge needed
            entries: list[Entry] = self._r(partial(
                event_time_entries, self._raw, k.stream(topic), k.index(topic), lo, hi, page=_PAGE
            ))
            if match is not None:
                entries = [e for e in entries if _type_matches(match, e[1])]
            return self._decode(topic, entries)
        out: list[Event] = []
        cutoff: int | None = None
        reader = EventTimeReader(
            self._raw, k.stream(topic), k.index(topic), lo, hi, page=_PAGE
        )
        while True:
            page = self._r(reader.step)
            if page is None:
                break
            if not page:
                continue
            last_ts = page[-1][2]
            if cutoff is not None:  # only ties with the last kept time still matter
                page = [p for p in page if p[2] <= cutoff]
            entries = [(sid, flat) for sid, flat, _ in page]
            if match is not None:
                entries = [e for e in entries if _type_matches(match, e[1])]
            out.extend(self._decode(topic, entries))
            if limit is not None and cutoff is None and len(out) >= limit:
                out.sort(key=sort_key)
                cutoff = out[limit - 1].timestamp_us
            if cutoff is not None and last_ts > cutoff:
                break
        return out

    def delete(self, event_id: str) -> bool:
        where = self.locate(event_id)
        if where is None:
            return False
        topic, sid = where
        k = self._keys
        keys = [k.stream(topic), k.index(topic), k.ids(topic)]
        n = self._r(partial(self._delete.run, self.bus.client, keys, [sid, event_id]))
        return bool(n)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC pass while a range is read and decoded: every entry and event it builds
    stays alive, so the passes it would trigger (about one per 700 new containers, with
    older generations re-scanned as they fill) find nothing to free, and cost a quarter of
    a 10k-event query (docs/benchmarks.md).  Reference counting still frees garbage; GC is
    re-enabled only if it was on."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _event_us(flat: list[bytes]) -> int:
    """The event time (``ts``) of an entry's flat field list; 0 if it has none."""
    raw = dict(zip(flat[::2], flat[1::2], strict=False)).get(b"ts", b"0")
    return int(raw) if raw.isdigit() else 0


def _type_matches(match: Callable[[str], bool], flat: list[bytes]) -> bool:
    """Whether the entry's type matches; an entry without one is kept so decoding reports it."""
    if len(flat) > 3 and flat[2] == b"type":
        raw: Any = flat[3]
    else:
        raw = dict(zip(flat[::2], flat[1::2], strict=False)).get(b"type")
    return not isinstance(raw, bytes) or match(raw.decode(errors="replace"))
