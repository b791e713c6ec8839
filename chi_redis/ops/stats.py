"""Operational statistics: per topic and per subscription, in three pipelined round trips.

Per topic: length, first and last entry (stream id and event time), memory of the stream
and its time index.  Per subscription: lag (entries not yet read, summed over its topic
groups; unknown when Redis cannot tell after a trim or a SETID), pending entries, age of
the oldest pending entry, consumers, what waits in its private stream, delayed retries
and dead letters.  Round trips do not grow with the number of topics or subscriptions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec
import redis.exceptions as rex

from ..backend.cluster import is_cluster
from ..backend.streamids import parse_id
from ..events.codec import iso_us
from ..events.partitioning import Declaration
from ..runtime.subscriptions import decode_record

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = ["GroupStats", "Stats", "SubscriptionStats", "TopicStats", "collect", "collect_groups"]

# Plain mutable msgspec structs, not dataclasses: a dataclass compiles its generated
# methods when its module is imported, which `chi-redis stats` would pay on every run.


class TopicStats(msgspec.Struct):
    topic: str
    length: int = 0
    first_id: str | None = None
    last_id: str | None = None
    first_event_time: str | None = None
    last_event_time: str | None = None
    memory_bytes: int = 0
    groups: int = 0
    partitions: int = 0  #: 0: not partitioned (docs/design.md §15)


class SubscriptionStats(msgspec.Struct):
    name: str
    registered: bool = False
    last_seen_ms: int | None = None
    topics: list[str] = msgspec.field(default_factory=list)
    lag: int | None = 0
    pending: int = 0
    oldest_pending_age_s: float | None = None
    consumers: int = 0
    queued: int = 0
    delayed: int = 0
    dead_letters: int = 0


class GroupStats(msgspec.Struct):
    """One consumer group of a subscription: on a topic stream, or (topic None) its queue."""

    subscription: str
    topic: str | None
    lag: int | None
    pending: int


class Stats(msgspec.Struct):
    server_time_ms: int
    topics: list[TopicStats]
    subscriptions: list[SubscriptionStats]

    def as_dict(self) -> dict[str, Any]:
        """Plain dicts and lists all the way down, fields in declaration order."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _event_time(entry: Any) -> str | None:
    if not entry:
        return None
    sid, fields = entry[0], entry[1]
    if isinstance(fields, list):  # flat list on some protocol versions
        it = iter(fields)
        fields = dict(zip(it, it, strict=False))
    try:
        return iso_us(int(fields[b"ts"]))
    except (KeyError, ValueError, TypeError, OverflowError):
        return iso_us(parse_id(sid)[0] * 1000)


def _execute(bus: EventBus, build: Any) -> list[Any]:
    def run() -> list[Any]:
        pipe = bus.client.pipeline(transaction=False)
        build(pipe)
        return pipe.execute(raise_on_error=False)

    results: list[Any] = bus.call(run)
    for r in results:
        if isinstance(r, Exception) and not isinstance(r, rex.ResponseError):
            raise r
    return results


def collect(bus: EventBus) -> Stats:
    """Gather the statistics of every registered topic and subscription."""
    return collect_groups(bus)[0]


def collect_groups(bus: EventBus) -> tuple[Stats, list[GroupStats]]:
    """:func:`collect`, plus each consumer group's own lag and pending count (the
    per-topic detail the metrics exporter needs; the same three round trips)."""
    k = bus.keys
    topics_raw, subs_raw, parts_raw, now = _registries(bus)
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    topics = sorted(_s(t) for t in topics_raw)
    registry = {_s(n): decode_record(_s(n), v) for n, v in subs_raw.items()}
    decls = {_s(t): Declaration.decode(v) for t, v in parts_raw.items()}
    # Each topic's names: itself, and its partitions when partitioned (one topic to all).
    names_of = [(t, n) for t in topics
                for n in ([t, *decls[t].parts(t)] if t in decls else [t])]

    def round2(p: Any) -> None:
        for _, n in names_of:
            p.xinfo_stream(k.stream(n))
            p.memory_usage(k.stream(n))
            p.memory_usage(k.index(n))
            p.xinfo_groups(k.stream(n))

    r2 = _execute(bus, round2)
    tstats: list[TopicStats] = []
    subs: dict[str, SubscriptionStats] = {
        n: SubscriptionStats(n, True, rec.last_seen_ms) for n, rec in registry.items()
    }
    need_pending: list[tuple[str, str]] = []  # (stream, group)
    detail: list[GroupStats] = []
    _topic_rows(k, names_of, decls, r2, tstats, subs, need_pending, detail)
    names = sorted(subs)

    def round3(p: Any) -> None:
        for stream, group in need_pending:
            p.xpending(stream, group)
        for n in names:
            p.zcard(k.delayed(n))
            p.xlen(k.dlq(n))
            p.xinfo_groups(k.queue(n))
            p.xpending(k.queue(n), n)

    r3 = _execute(bus, round3)
    oldest: dict[str, int] = {}
    for (_, group), p in zip(need_pending, r3, strict=False):
        _note_oldest(oldest, group, p)
    rest = r3[len(need_pending) :]
    for i, n in enumerate(names):
        delayed, dlq, qgroups, qpending = rest[4 * i : 4 * i + 4]
        sub = subs[n]
        sub.delayed = delayed if isinstance(delayed, int) else 0
        sub.dead_letters = dlq if isinstance(dlq, int) else 0
        for g in qgroups if isinstance(qgroups, list) else ():
            if _s(g["name"]) == n:
                detail.append(GroupStats(n, None, _lag(g), int(g["pending"])))
                sub.queued = int(g.get("lag") or 0)
                sub.pending += int(g["pending"])
                sub.consumers = max(sub.consumers, int(g["consumers"]))
        _note_oldest(oldest, n, qpending)
        if n in oldest:
            sub.oldest_pending_age_s = max(now_ms - oldest[n], 0) / 1000
    return Stats(now_ms, tstats, [subs[n] for n in names]), detail


def _topic_rows(
    k: Any, names_of: list[tuple[str, str]], decls: dict[str, Declaration], r2: list[Any],
    tstats: list[TopicStats], subs: dict[str, SubscriptionStats],
    need_pending: list[tuple[str, str]], detail: list[GroupStats],
) -> None:
    """One row per topic from the second round's replies (a partitioned topic's
    partitions summed into it), and each group's lag and pending into its subscription."""
    by_topic: dict[str, TopicStats] = {}
    seen: dict[tuple[str, str], GroupStats] = {}
    for i, (t, n) in enumerate(names_of):
        info, mem_s, mem_i, groups = r2[4 * i : 4 * i + 4]
        ts = by_topic.get(t)
        if ts is None:
            ts = by_topic[t] = TopicStats(t, partitions=decls[t].partitions if t in decls else 0)
            tstats.append(ts)
        if isinstance(info, dict):
            _add_stream(ts, info)
        ts.memory_bytes += sum(m for m in (mem_s, mem_i) if isinstance(m, int))
        for g in groups if isinstance(groups, list) else ():
            name = _s(g["name"])
            gs = seen.get((name, t))
            sub = subs.setdefault(name, SubscriptionStats(name))
            if gs is None:
                gs = seen[name, t] = GroupStats(name, t, 0, 0)
                detail.append(gs)
                ts.groups += 1
                sub.topics.append(t)
            lag = _lag(g)
            gs.lag = None if gs.lag is None or lag is None else gs.lag + lag
            gs.pending += int(g["pending"])
            sub.lag = None if sub.lag is None or g.get("lag") is None else sub.lag + int(g["lag"])
            sub.pending += int(g["pending"])
            sub.consumers = max(sub.consumers, int(g["consumers"]))
            if g["pending"]:
                need_pending.append((k.stream(n), name))


def _add_stream(ts: TopicStats, info: dict[Any, Any]) -> None:
    """Add one stream's XINFO STREAM (the topic's, or one of its partitions') to ``ts``."""
    ts.length += int(info["length"])
    first, last = info.get("first-entry"), info.get("last-entry")
    if first and (ts.first_id is None or parse_id(_s(first[0])) < parse_id(ts.first_id)):
        ts.first_id, ts.first_event_time = _s(first[0]), _event_time(first)
    if last and (ts.last_id is None or parse_id(_s(last[0])) > parse_id(ts.last_id)):
        ts.last_id, ts.last_event_time = _s(last[0]), _event_time(last)


def _registries(bus: EventBus) -> tuple[Any, Any, Any, Any]:
    """The topics set, the subscription registry, the partitioned topics and the server's
    TIME: one round trip (two on a cluster, whose pipelines refuse TIME)."""
    k = bus.keys
    if is_cluster(bus.client):
        topics_raw, subs_raw, parts_raw = _execute(bus, lambda p: (
            p.smembers(k.topics()), p.hgetall(k.subs()), p.hgetall(k.partitions())))
        return topics_raw, subs_raw, parts_raw, bus.call(bus.client.time)
    topics_raw, subs_raw, parts_raw, now = _execute(bus, lambda p: (
        p.smembers(k.topics()), p.hgetall(k.subs()), p.hgetall(k.partitions()), p.time()))
    return topics_raw, subs_raw, parts_raw, now


def _lag(group: Any) -> int | None:
    lag = group.get("lag")
    return None if lag is None else int(lag)


def _note_oldest(oldest: dict[str, int], group: str, summary: Any) -> None:
    if isinstance(summary, dict) and summary.get("pending") and summary.get("min"):
        ms = parse_id(summary["min"])[0]
        oldest[group] = min(oldest.get(group, ms), ms)


#: Printed under a table when a lag is unknown (Redis reports none for that group).
LAG_FOOTNOTE = (
    "lag ?: unknown - Redis cannot count the entries a group has not read yet once entries"
    " between its position and the stream's end were trimmed or deleted (XINFO GROUPS"
    " reports no lag); it is known again after the group reads past them"
)


def render(stats: Stats) -> Iterable[str]:
    """The statistics as two text tables (and :data:`LAG_FOOTNOTE` when a lag is unknown)."""
    yield f"{'TOPIC':<24} {'LENGTH':>9} {'MEMORY':>9} {'GROUPS':>6}  {'FIRST EVENT':<27} LAST EVENT"
    for t in stats.topics:
        yield (
            f"{t.topic:<24} {t.length:>9} {_size(t.memory_bytes):>9} {t.groups:>6}  "
            f"{t.first_event_time or '-':<27} {t.last_event_time or '-'}"
        )
    yield ""
    yield (
        f"{'SUBSCRIPTION':<24} {'LAG':>8} {'PENDING':>8} {'OLDEST':>8} {'CONS':>5}"
        f" {'QUEUED':>7} {'DELAYED':>8} {'DLQ':>6}  TOPICS"
    )
    for s in stats.subscriptions:
        lag = "?" if s.lag is None else str(s.lag)
        age = "-" if s.oldest_pending_age_s is None else _age(s.oldest_pending_age_s)
        name = s.name if s.registered else f"{s.name} (unregistered)"
        yield (
            f"{name:<24} {lag:>8} {s.pending:>8} {age:>8} {s.consumers:>5} {s.queued:>7}"
            f" {s.delayed:>8} {s.dead_letters:>6}  {','.join(s.topics) or '-'}"
        )
    if any(s.lag is None for s in stats.subscriptions):
        yield ""
        yield LAG_FOOTNOTE


def _size(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    v = n / 1024
    for unit in ("KiB", "MiB"):
        if v < 1024:
            return f"{v:.1f}{unit}"
        v /= 1024
    return f"{v:.1f}GiB"


def _age(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    if s < 172_800:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"
