"""Looking closer: one event, a range of events, one subscription's consumers and pending list.

What ``chi-redis events get|list`` prints and what the web console shows come from here,
so the two cannot disagree: the commands format these results as text or JSON lines, the
console as HTML.  Reads only; nothing here changes state.

Which subscriptions have handled an event (:func:`handled_by`) is answered from what Redis
keeps per consumer group: the group's last-delivered id against the event's stream id, its
pending list (delivered, not yet acknowledged) and the subscription's dead letters.  An
entry past the group's position and not pending was acknowledged: handled, or skipped by
the subscription's filter (the bound types say which).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from ..backend.streamids import MAX_SEQ, parse_id
from ..errors import NotFoundError, ValidationError
from ..events.names import validate_name
from ..store.history import By, index_pages, merged, str_fields, stream_pages
from ..store.query import TypeFilter
from .timeparse import TimePoint

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = [
    "ConsumerInfo",
    "Handling",
    "PendingEntry",
    "consumers",
    "get_event",
    "handled_by",
    "iter_events",
    "locate_event",
    "pending_entries",
    "read_history",
]

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# events -------------------------------------------------------------------------------------
def locate_event(bus: EventBus, ref: str, topic: str | None = None) -> tuple[str, str] | None:
    """``(topic, stream id)`` of the event ``ref`` names: its event id, or a stream id.

    A stream id is unique within a topic only: one found in several topics raises
    :class:`ValidationError` asking for ``topic``.
    """
    where = bus.store.locate(ref)
    if where is not None or not _STREAM_ID.fullmatch(ref):
        return where
    names = [validate_name(topic, "topic")] if topic is not None else bus.store.topics()
    found = bus.store.topics_with_entry(ref, names)
    if len(found) > 1:
        raise ValidationError(
            f"stream id {ref} is in topics {', '.join(found)}: give --topic TOPIC",
            field="topic",
        )
    return (found[0], ref) if found else None


def get_event(bus: EventBus, ref: str, topic: str | None = None) -> dict[str, Any]:
    """The envelope of the event ``ref`` names (see :func:`locate_event`).

    Raises :class:`NotFoundError` when there is none, or it was trimmed."""
    where = locate_event(bus, ref, topic)
    entries: list[Any] = []
    if where is not None:
        found_topic, sid = where
        key = bus.keys.stream(found_topic)
        entries = bus.call(lambda: bus.client.xrange(key, sid, sid))
    if where is None or not entries:
        raise NotFoundError(f"no event {ref!r}" + (" (trimmed)" if where else ""))
    env: dict[str, Any] = bus.codec.envelope(where[0], entries[0][0], str_fields(entries[0][1]))
    return env


def read_history(
    bus: Any, topics: list[str], by: By, since: TimePoint | None, until: TimePoint | None,
    page: int = 1000,
) -> Any:
    """Merged pages of items of ``topics`` in the range."""
    if by == "append":
        lo = since.lower_id() if since else (0, 0)
        hi = until.upper_id() if until else (MAX_SEQ, MAX_SEQ)
        readers = [stream_pages(bus.client, bus.keys, t, lo, hi, page=page) for t in topics]
    else:
        lo_us = since.lower_us() if since else 0
        hi_us = until.upper_us() if until else 2**62
        readers = [index_pages(bus.client, bus.keys, t, lo_us, hi_us, page=page) for t in topics]
    return merged(readers, by, page)


def iter_events(
    bus: EventBus, topics: list[str], by: By, since: TimePoint | None,
    until: TimePoint | None, globs: list[str] | None = None, *, limit: int = 100,
    offset: int = 0,
) -> Iterator[dict[str, Any]]:
    """Envelopes of the events in the range, oldest first (``limit`` 0: no limit)."""
    match = TypeFilter(globs or [])
    names = topics or bus.store.topics()
    skip, left = offset, limit or None
    size = min(1000, (limit or 1000) + offset)
    for page in read_history(bus, names, by, since, until, page=size):
        for topic, sid, f, _ in page:
            if match and not match(f):
                continue
            if skip:
                skip -= 1
                continue
            yield bus.codec.envelope(topic, sid, f)
            if left is not None:
                left -= 1
                if not left:
                    return


# subscriptions ------------------------------------------------------------------------------
@dataclass
class ConsumerInfo:
    """One consumer of a subscription's group: on a topic stream, or (topic None) its queue."""

    topic: str | None
    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None  # since its last successful read (Redis 7.2+), else None


@dataclass
class PendingEntry:
    """An entry delivered to a consumer and not acknowledged yet."""

    topic: str | None  # None: the subscription's queue (retries, redrives, replays)
    stream_id: str
    consumer: str
    idle_ms: int
    deliveries: int


def _groups_of(bus: EventBus, sub: str, topics: list[str]) -> list[tuple[str | None, str]]:
    """``(topic or None, stream key)`` of every stream where ``sub`` has its group."""
    validate_name(sub, "subscription")
    return [*((t, bus.keys.stream(t)) for t in topics), (None, bus.keys.queue(sub))]


def _pipelined(bus: EventBus, calls: list[Any]) -> list[Any]:
    def run() -> list[Any]:
        pipe = bus.client.pipeline(transaction=False)
        for call in calls:
            call(pipe)
        return pipe.execute(raise_on_error=False)

    out: list[Any] = bus.call(run)
    for r in out:
        if isinstance(r, Exception) and not isinstance(r, rex.ResponseError):
            raise r
    return out


def consumers(bus: EventBus, sub: str, topics: list[str]) -> list[ConsumerInfo]:
    """Every consumer of ``sub`` on ``topics`` and its queue, with its idle time (one round
    trip; a stream or group that does not exist has none)."""
    where = _groups_of(bus, sub, topics)
    results = _pipelined(bus, [
        lambda p, key=key: p.xinfo_consumers(key, sub) for _, key in where])
    out: list[ConsumerInfo] = []
    for (topic, _), found in zip(where, results, strict=True):
        for c in found if isinstance(found, list) else ():
            inactive = c.get("inactive")
            out.append(ConsumerInfo(
                topic, _s(c["name"]), int(c["pending"]), int(c["idle"]),
                None if inactive is None or int(inactive) < 0 else int(inactive)))
    return out


def pending_entries(
    bus: EventBus, sub: str, topics: list[str], count: int = 50,
) -> list[PendingEntry]:
    """Up to ``count`` pending entries of ``sub`` per stream, oldest first, with how often
    each was delivered (XPENDING's delivery counter)."""
    where = _groups_of(bus, sub, topics)
    results = _pipelined(bus, [
        lambda p, key=key: p.xpending_range(key, sub, "-", "+", count) for _, key in where])
    out: list[PendingEntry] = []
    for (topic, _), found in zip(where, results, strict=True):
        for e in found if isinstance(found, list) else ():
            out.append(PendingEntry(
                topic, _s(e["message_id"]), _s(e["consumer"]), int(e["time_since_delivered"]),
                int(e["times_delivered"])))
    out.sort(key=lambda e: parse_id(e.stream_id))
    return out


@dataclass
class Handling:
    """Where one subscription stands with one event."""

    subscription: str
    state: str  # handled | skipped | in-flight | not-yet | dead-lettered
    detail: str = ""


def handled_by(
    bus: EventBus, topic: str, stream_id: str, event_id: str, event_type: str,
) -> list[Handling]:
    """Each consumer group on ``topic`` and where it stands with the entry ``stream_id``."""
    from .deadletters import find_dead_letters
    from .registry import registry

    key = bus.keys.stream(topic)
    groups = bus.call(lambda: bus.client.xinfo_groups(key))
    names = sorted(_s(g["name"]) for g in groups)
    last = {_s(g["name"]): parse_id(_s(g["last-delivered-id"])) for g in groups}
    pel = _pipelined(bus, [
        lambda p, n=n: p.xpending_range(key, n, stream_id, stream_id, 1) for n in names])
    records = registry(bus)
    at = parse_id(stream_id)
    out: list[Handling] = []
    for name, pending in zip(names, pel, strict=True):
        dead = find_dead_letters(bus, name, event_id)
        if dead:
            out.append(Handling(name, "dead-lettered", ", ".join(d.id for d in dead)))
        elif isinstance(pending, list) and pending:
            p = pending[0]
            out.append(Handling(name, "in-flight", f"consumer {_s(p['consumer'])},"
                                f" {int(p['times_delivered'])} deliveries"))
        elif last[name] < at:
            out.append(Handling(name, "not-yet", "past the group's position"))
        else:
            record = records.get(name)
            wants = record is None or not record.types or TypeFilter(list(record.types))(
                {"type": event_type.encode()})
            out.append(Handling(name, "handled" if wants else "skipped",
                                "acknowledged" if wants else "its types do not match"))
    return out
