"""Replay from the archive: a time range of a persistent store, delivered like a stream replay.

The archive (:mod:`chi_redis.ops.archive`) holds events Redis retention already trimmed.
:func:`replay_archive` reads ``[since, until]`` by event time from the store and hands the
events to the same targets a stream replay uses (:mod:`chi_redis.ops.targets`: one
subscription, republished, printed).  An archived event has no stream id any more: its item
carries the synthetic id ``<event time ms>-0``, which only the queue target's message options
(``src_id``) and the print target's ``stream_id`` show.  No checkpoint: a rerun delivers again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..events.codec import Codec
from ..events.event import Event
from ..store.history import Item
from ..store.query import TypeFilter
from .replay import ReplayOptions, ReplayReport
from .targets import Target
from .timeparse import TimePoint

if TYPE_CHECKING:
    from ..store import EventStore

__all__ = ["archive_items", "replay_archive"]

_NAMES = ("id", "type", "ts", "ver", "meta", "enc", "data")


def archive_items(events: list[Event], codec: Codec) -> list[Item]:
    """History items for events read from an archive store (synthetic stream ids)."""
    out: list[Item] = []
    for e in events:
        values = codec.encode(e)
        us = e.timestamp_us
        out.append((e.topic, f"{us // 1000}-0".encode(), dict(zip(_NAMES, values, strict=True)),
                    us))
    return out


def _pages(store: EventStore, lo: int, hi: int, topics: list[str], page: int
           ) -> Iterator[list[Event]]:
    pages: Any = getattr(store, "time_pages", None)
    from ..events.codec import us_to_datetime

    if pages is not None and len(topics) <= 1:
        yield from pages(lo, hi, topic=topics[0] if topics else None, page=page)
        return
    events = store.load_by_time_range(us_to_datetime(lo), us_to_datetime(hi))
    if topics:
        events = [e for e in events if e.topic in topics]
    for i in range(0, len(events), page):
        yield events[i : i + page]


def replay_archive(
    store: EventStore, target: Target | None, codec: Codec, *, topics: list[str] | None = None,
    since: TimePoint | None = None, until: TimePoint | None = None,
    types: list[str] | None = None, options: ReplayOptions | None = None,
) -> ReplayReport:
    """Deliver the archived events in ``[since, until]`` (event time) to ``target`` (None:
    count only)."""
    opts = options or ReplayOptions()
    opts.validate()
    names = sorted(set(topics or []))
    report = ReplayReport(target=target.name if target else "count", by="event-time",
                          topics=names or ["*"], dry_run=opts.dry_run or target is None)
    lo = since.lower_us() if since else 0
    hi = until.upper_us() if until else int(time.time() * 1_000_000)
    check = TypeFilter(types or [], target.types if target else ())
    start = time.monotonic()
    for events in _pages(store, lo, hi, names, opts.batch_size):
        items = archive_items(events, codec)
        report.scanned += len(items)
        chosen = check.select(items) if check else items
        report.skipped_types += len(items) - len(chosen)
        if not chosen:
            continue
        if target is not None and not report.dry_run:
            target.send(target.prepare(chosen), "", {})
        report.delivered += len(chosen)
        for it in chosen:
            report.per_topic[it[0]] = report.per_topic.get(it[0], 0) + 1
    report.elapsed_s = time.monotonic() - start
    return report
