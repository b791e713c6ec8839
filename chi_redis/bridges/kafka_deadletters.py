"""Dead letters of the Kafka bus: list, show, redrive and purge ``NS._dlq.SUB``.

A Kafka topic is an append-only log: one record cannot be deleted (``DeleteRecords`` only
cuts a whole partition's head, and not every Kafka-compatible broker has it).  So a record
that was redriven or purged is *marked*: a marker record (empty value, header
``chi-dlq-mark`` = ``redriven`` or ``purged``, header ``chi-dlq-ids`` = the ``P:O`` ids it
settles) is appended to the same topic, and listing leaves out every record a marker names.
The records themselves go when the topic's retention removes them.

Redrive appends the dead letter's record (key, value and the event's headers, without the
``chi-dlq-*`` ones) to the chi topic it came from, with header ``chi-for`` = the
subscription: the other subscriptions' consumers commit it unseen, so only the subscription
that dead-lettered it runs it again, with a fresh retry budget.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError
from ..events.names import validate_name
from .kafka import _client, dead_letter_topic, mapped_errors

if TYPE_CHECKING:
    from .kafka import KafkaEventBus

__all__ = ["FOR_HEADER", "find", "list_dead_letters", "mark", "redrive"]

#: The header that limits a redriven record to one subscription.
FOR_HEADER = "chi-for"
MARK = "chi-dlq-mark"
MARK_IDS = "chi-dlq-ids"
#: How long a read waits for the next record before it takes the topic as read to its end.
IDLE_S = 1.0
POLL_S = 0.2


def _text(v: bytes | None) -> str:
    return (v or b"").decode("utf-8", "replace")


def _scan(bus: KafkaEventBus, topic: str, timeout_s: float) -> list[Any]:
    """Every record of ``topic`` (in no particular order across partitions), read by a
    group-less consumer until ``IDLE_S`` passes without one.  High watermarks are not
    used to find the end: some Kafka-compatible brokers (tansu) count record batches
    there, not records."""
    ck = _client()
    consumer = ck.Consumer({"bootstrap.servers": bus.bootstrap, "group.id": "chi-dlq-reader",
                            "enable.auto.commit": False, **bus.client_options})
    try:
        with mapped_errors(bus.bootstrap):
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING)
                         for p in sorted(meta.partitions)])
        out: list[Any] = []
        now = time.monotonic()
        deadline, idle_until = now + timeout_s, now + IDLE_S
        while time.monotonic() < min(deadline, idle_until):
            msg = consumer.poll(POLL_S)
            if msg is None or msg.error():
                continue
            idle_until = time.monotonic() + IDLE_S
            out.append(msg)
        return out
    finally:
        consumer.close()


def _letter(msg: Any) -> dict[str, Any]:
    h = {k: _text(v) for k, v in (msg.headers() or [])}
    return {"id": f"{msg.partition()}:{msg.offset()}", "event_id": h.get("chi-id"),
            "type": h.get("chi-type"), "reason": h.get("chi-dlq-reason"),
            "exception": h.get("chi-dlq-exception"), "error": h.get("chi-dlq-error"),
            "attempts": int(h.get("chi-dlq-attempts") or 0),
            "source": h.get("chi-dlq-source"), "at_ms": int(h.get("chi-dlq-at-ms") or 0)}


def _live(bus: KafkaEventBus, sub: str, timeout_s: float) -> list[tuple[dict[str, Any], Any]]:
    """``(dead letter, record)`` of every record of ``sub``'s dead-letter topic that no
    marker settled, oldest first."""
    validate_name(sub, "subscription")
    records: list[tuple[dict[str, Any], Any]] = []
    settled: set[str] = set()
    for msg in _scan(bus, dead_letter_topic(bus.namespace, sub), timeout_s):
        headers = dict(msg.headers() or [])
        if MARK in headers:
            settled.update(i for i in _text(headers.get(MARK_IDS)).split(",") if i)
        else:
            records.append((_letter(msg), msg))
    live = [r for r in records if r[0]["id"] not in settled]
    return sorted(live, key=lambda r: (r[0]["at_ms"], r[0]["id"]))


def list_dead_letters(bus: KafkaEventBus, sub: str, *, count: int = 100,
                      timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Up to ``count`` dead letters of ``sub`` not yet redriven or purged, oldest first."""
    return [d for d, _ in _live(bus, sub, timeout_s)[:count]]


def find(bus: KafkaEventBus, sub: str, ref: str, *, timeout_s: float = 30.0
         ) -> tuple[dict[str, Any], Any]:
    """The dead letter ``ref`` names (its ``P:O`` id, or its event's id) and its record."""
    hits = [r for r in _live(bus, sub, timeout_s) if ref in (r[0]["id"], r[0]["event_id"])]
    if not hits:
        raise NotFoundError(f"no dead letter {ref!r} in subscription {sub!r} on the Kafka bus")
    if len(hits) > 1:
        ids = ", ".join(d["id"] for d, _ in hits)
        raise NotFoundError(f"event {ref!r} is in several dead letters of {sub!r} ({ids}):"
                            " give one of those ids")
    return hits[0]


def mark(bus: KafkaEventBus, sub: str, ids: list[str], what: str) -> None:
    """Append a marker settling ``ids`` (``what``: ``redriven`` or ``purged``)."""
    topic = dead_letter_topic(bus.namespace, sub)
    producer = bus.producer()
    for start in range(0, len(ids), 500):  # a marker record stays small
        results: list[Any] = [None]
        chunk = ",".join(ids[start:start + 500])
        bus._produce(producer, topic, b"", b"",
                     [(MARK, what.encode()), (MARK_IDS, chunk.encode())], results, 0)
        producer.flush(bus.timeout_s + 5)
        bus._outcome(results)


def _redrive_one(bus: KafkaEventBus, sub: str, msg: Any) -> None:
    headers = dict(msg.headers() or [])
    source = _text(headers.get("chi-dlq-source"))
    topic = source.rsplit(":", 2)[0] if source.count(":") >= 2 else ""
    if not topic:
        raise NotFoundError(f"dead letter {msg.partition()}:{msg.offset()} of {sub!r} names no"
                            " source topic (chi-dlq-source): cannot redrive it")
    kept = [(k, v) for k, v in (msg.headers() or [])
            if not k.startswith("chi-dlq-") and k != FOR_HEADER]
    results: list[Any] = [None]
    producer = bus.producer()
    bus._produce(producer, topic, msg.key() or b"", msg.value() or b"",
                 [*kept, (FOR_HEADER, sub.encode())], results, 0)
    producer.flush(bus.timeout_s + 5)
    bus._outcome(results)


def redrive(bus: KafkaEventBus, sub: str, refs: list[str] | None, *,
            timeout_s: float = 30.0) -> int:
    """Append dead letters of ``sub`` (all, or those ``refs`` name) to their source topics
    for ``sub`` only, then mark them redriven; returns how many.  A redrive that stops
    half-way leaves the rest listed (those sent before are marked one by one)."""
    if refs is None:
        picked = [m for _, m in _live(bus, sub, timeout_s)]
    else:
        picked = [find(bus, sub, r, timeout_s=timeout_s)[1] for r in dict.fromkeys(refs)]
    with mapped_errors(bus.bootstrap):
        for msg in picked:
            _redrive_one(bus, sub, msg)
            mark(bus, sub, [f"{msg.partition()}:{msg.offset()}"], "redriven")
    return len(picked)


def purge(bus: KafkaEventBus, sub: str, *, before_ms: int | None = None,
          timeout_s: float = 30.0) -> int:
    """Mark every dead letter of ``sub`` (dead-lettered before ``before_ms``, if given)
    purged; returns how many."""
    ids = [d["id"] for d, _ in _live(bus, sub, timeout_s)
           if before_ms is None or d["at_ms"] < before_ms]
    if ids:
        with mapped_errors(bus.bootstrap):
            mark(bus, sub, ids, "purged")
    return len(ids)
