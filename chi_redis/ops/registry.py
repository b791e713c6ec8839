"""The subscription registry, seen from operations: list, rewind, prune.

Workers record each subscription in the ``keys.subs()`` hash when they start and refresh
its ``last_seen_ms``; its consumer groups live on the topic streams.  A subscription is
*registered* while it has been seen within ``subscriptions_seen_days`` (docs/design.md §9.4);
groups of subscriptions no longer registered (and groups no registry entry explains) hold
back retention forever, which is what ``prune`` is for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from ..backend.streamids import format_id, parse_id, pred
from ..errors import NotFoundError, RedeliveryRefusedError
from ..events.names import validate_name
from ..runtime.subscriptions import SubscriptionRecord, decode_record
from .timeparse import TimePoint

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = [
    "Registered",
    "find",
    "groups_by_subscription",
    "prune",
    "prune_candidates",
    "registered",
    "registry",
    "rewind",
    "subscriptions",
    "topic_names",
]

DAY_MS = 86_400_000


@dataclass
class Registered:
    """A subscription as the registry and the topic streams know it."""

    name: str
    info: SubscriptionRecord | None  # None: a group with no registry entry
    topics: list[str] = field(default_factory=list)  # topics holding a group of this name

    @property
    def last_seen_ms(self) -> int | None:
        return self.info.last_seen_ms if self.info else None


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def registry(bus: EventBus) -> dict[str, SubscriptionRecord]:
    """Every registry entry: subscription name → its record."""
    raw = bus.call(lambda: bus.client.hgetall(bus.keys.subs()))
    return {_s(name): decode_record(_s(name), value) for name, value in raw.items()}


def registered(bus: EventBus, sub: str) -> SubscriptionRecord:
    """The registry record of ``sub``; :class:`NotFoundError` when it was never registered."""
    validate_name(sub, "subscription")
    raw = bus.call(lambda: bus.client.hget(bus.keys.subs(), sub))
    if raw is None:
        raise NotFoundError(
            f"unknown subscription {sub!r}: not in the registry (a worker registers it when"
            " it starts; `chi-redis subscriptions list` shows the known ones)"
        )
    return decode_record(sub, raw)


def topic_names(bus: EventBus, *, scan: bool = False) -> list[str]:
    """Topics that may hold consumer groups: the topic registry, the topics registered
    subscriptions bind (their streams exist before anything is published), and with
    ``scan`` every ``<ns>:{*}:stream`` key (SCAN with a fixed pattern, never KEYS)."""
    names = set(bus.store.topics())
    for record in registry(bus).values():
        names.update(record.bound_topics())  # a wildcard's topics are all in the store's
    if scan:
        k = bus.keys
        pattern = f"{k.ns}:{{*}}:stream"
        keys = bus.call(lambda: list(bus.client.scan_iter(match=pattern, count=1000,
                                                          _type="STREAM")))
        names.update(k.topic_from_stream(key.decode()) for key in keys)
    return sorted(names)


def groups_by_subscription(bus: EventBus, *, scan: bool = False) -> dict[str, list[str]]:
    """Group name → the topics whose stream has a group of that name (one round trip)."""
    topics = topic_names(bus, scan=scan)

    def run() -> list[Any]:
        pipe = bus.client.pipeline(transaction=False)
        for t in topics:
            pipe.xinfo_groups(bus.keys.stream(t))
        return pipe.execute(raise_on_error=False)

    out: dict[str, list[str]] = {}
    for topic, groups in zip(topics, bus.call(run), strict=True):
        if isinstance(groups, rex.ResponseError):
            continue
        if isinstance(groups, Exception):
            raise groups
        for g in groups:
            out.setdefault(_s(g["name"]), []).append(topic)
    return out


def subscriptions(bus: EventBus, *, scan: bool = False) -> list[Registered]:
    """Registry entries and group-only subscriptions, sorted by name."""
    reg = registry(bus)
    groups = groups_by_subscription(bus, scan=scan)
    names = sorted(set(reg) | set(groups))
    return [Registered(n, reg.get(n), groups.get(n, [])) for n in names]


def find(bus: EventBus, sub: str) -> Registered:
    """One subscription; :class:`NotFoundError` when neither registered nor grouped."""
    validate_name(sub, "subscription")
    for r in subscriptions(bus):
        if r.name == sub:
            return r
    raise NotFoundError(
        f"unknown subscription {sub!r}: no registry entry and no consumer group of that name"
    )


def rewind(
    bus: EventBus, sub: str, to: TimePoint, topics: list[str] | None = None, *,
    force: bool = False,
) -> dict[str, str]:
    """Move the group of ``sub`` on each of its topics back (or forward) to ``to``.

    The next read delivers entries from ``to`` on (inclusive).  Entries the group still
    has pending stay pending.  Moving a group back over entries it already delivered runs
    their handlers (and side effects) again: without ``force`` that raises
    :class:`RedeliveryRefusedError` and no group is moved.  Returns topic → the
    last-delivered id that was set.
    """
    found = find(bus, sub)
    chosen = found.topics if topics is None else [t for t in found.topics if t in topics]
    if topics is not None and set(topics) - set(found.topics):
        missing = sorted(set(topics) - set(found.topics))[0]
        raise NotFoundError(f"subscription {sub!r} has no consumer group on topic {missing!r}")
    last = format_id(pred(to.lower_id()))
    if not force:
        again = {t: n for t in chosen if (n := sum(  # a partitioned topic: each partition
            redelivered(bus, sub, name, last) for name in bus.partitions.names(t)))}
        if again:
            where = ", ".join(f"{n} on topic {t}" for t, n in sorted(again.items()))
            raise RedeliveryRefusedError(
                f"rewinding {sub!r} re-delivers entries it already handled ({where});"
                " its handlers' side effects run again: pass --force to do it anyway, or"
                " replay the range --to a new subscription")
    done: dict[str, str] = {}
    for t in chosen:
        for name in bus.partitions.names(t):
            bus.call(lambda n=name: bus.client.xgroup_setid(bus.keys.stream(n), sub, last))
        done[t] = last
    return done


def redelivered(bus: EventBus, sub: str, topic: str, last: str, cap: int = 10_000) -> int:
    """How many entries the group ``sub`` on ``topic`` already delivered after ``last``
    (those a rewind to ``last`` delivers again; counted up to ``cap``)."""
    stream = bus.keys.stream(topic)
    groups = bus.call(lambda: bus.client.xinfo_groups(stream))
    current = next((g["last-delivered-id"] for g in groups
                    if _text(g["name"]) == sub), None)
    if current is None or parse_id(_text(current)) <= parse_id(last):
        return 0
    entries = bus.call(lambda: bus.client.xrange(stream, f"({last}", _text(current), count=cap))
    return len(entries)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def prune_candidates(bus: EventBus, seen_days: float) -> list[Registered]:
    """Subscriptions not seen within ``seen_days``, and groups with no registry entry."""
    cutoff = int(time.time() * 1000 - seen_days * DAY_MS)
    return [
        r for r in subscriptions(bus, scan=True)
        if r.info is None or r.last_seen_ms is None or r.last_seen_ms < cutoff
    ]


def prune(bus: EventBus, candidates: list[Registered], seen_days: float) -> list[str]:
    """Destroy the groups (on every topic stream) and registry entries of ``candidates``.

    Each is checked again just before: one whose worker came back meanwhile is kept.
    Returns the names pruned.
    """
    cutoff = int(time.time() * 1000 - seen_days * DAY_MS)
    topics = topic_names(bus, scan=True)
    pruned = []
    for c in candidates:
        raw = bus.call(lambda c=c: bus.client.hget(bus.keys.subs(), c.name))
        if raw is not None and (decode_record(c.name, raw).last_seen_ms or 0) >= cutoff:
            continue

        def drop(name: str = c.name) -> None:
            pipe = bus.client.pipeline(transaction=False)
            for t in topics:
                pipe.xgroup_destroy(bus.keys.stream(t), name)
            pipe.hdel(bus.keys.subs(), name)
            pipe.execute(raise_on_error=False)

        bus.call(drop)
        pruned.append(c.name)
    return pruned
