"""``chi-redis stats`` on the bridge buses, in the shape of the Redis statistics.

The same JSON keys as :class:`chi_redis.ops.stats.Stats` (``server_time_ms``, ``topics``,
``subscriptions`` with ``lag``, ``pending``, ``consumers``, ``queued``, ``delayed``,
``dead_letters``, ...), plus ``bus``; a value the broker cannot give is ``null`` (``-`` in
the table), and docs/buses.md says which and why.

RabbitMQ (over AMQP only; the management plugin is not required): a passive
``queue.declare`` of the subscription's queue gives its ready messages (``lag``: delivered
to no consumer yet) and its consumers; of its ``.dead`` queue, the dead letters.
Unacknowledged messages, delayed retries and the bindings are not visible over AMQP, and
AMQP cannot list queues, so the subscriptions are named with ``--sub``.

Kafka: each subscription's consumer group (listed by the admin API), its committed offset
per partition against the partition's end (``lag``, with a ``partitions`` list), its
members, and the records of its dead-letter topic not yet redriven or purged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError
from ..events.names import validate_name
from . import NotSupportedError
from .kafka import _client

if TYPE_CHECKING:
    from .kafka import KafkaEventBus
    from .rabbitmq import RabbitMQEventBus

__all__ = ["kafka_stats", "rabbitmq_stats", "render"]


def _sub(name: str, **values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "registered": None, "last_seen_ms": None,
                           "topics": [], "lag": None, "pending": None,
                           "oldest_pending_age_s": None, "consumers": None, "queued": None,
                           "delayed": None, "dead_letters": None}
    out.update(values)
    return out


# RabbitMQ ----------------------------------------------------------------------------------
def rabbitmq_stats(bus: RabbitMQEventBus, subs: Sequence[str]) -> dict[str, Any]:
    """The depths of the queues of ``subs`` (unknown subscriptions raise NotFoundError)."""
    if not subs:
        raise NotSupportedError(
            "stats on bus.type 'rabbitmq' needs --sub NAME (repeatable): AMQP cannot list a"
            " broker's queues; the RabbitMQ management UI or `rabbitmqctl list_queues` shows"
            " them all")
    from .amqp import pika_module

    pika = pika_module()
    out = []
    conn = bus.connect()
    try:
        for name in dict.fromkeys(subs):
            validate_name(name, "subscription")
            channel = conn.channel()
            try:
                main = channel.queue_declare(bus.names.queue(name), passive=True).method
                dead = channel.queue_declare(bus.names.dead_queue(name), passive=True).method
            except pika.exceptions.ChannelClosedByBroker:
                raise NotFoundError(f"unknown subscription {name!r} on the RabbitMQ bus: no"
                                    f" queue {bus.names.queue(name)!r} (no worker declared"
                                    " it yet)") from None
            channel.close()
            out.append(_sub(name, registered=True, lag=int(main.message_count),
                            consumers=int(main.consumer_count),
                            dead_letters=int(dead.message_count)))
    finally:
        if conn.is_open:
            conn.close()
    return {"bus": "rabbitmq", "server_time_ms": int(time.time() * 1000), "topics": [],
            "subscriptions": out}


# Kafka -------------------------------------------------------------------------------------
def _ends(bus: KafkaEventBus, consumer: Any, tps: list[Any]
          ) -> dict[tuple[str, int], tuple[int, int]]:
    """``(low, end)`` of each partition.  The end is the high watermark, corrected by
    reading from just before it: some Kafka-compatible brokers (tansu) report the base
    offset of the last record batch there, not the offset after the last record."""
    ck = _client()
    marks: dict[tuple[str, int], tuple[int, int]] = {}
    for tp in tps:
        low, high = consumer.get_watermark_offsets(tp, timeout=bus.timeout_s)
        marks[(tp.topic, tp.partition)] = (low, high)
    probe = [ck.TopicPartition(t, p, high - 1) for (t, p), (low, high) in marks.items()
             if high > low]
    if not probe:
        return marks
    consumer.assign(probe)
    waiting, idle_until = {(tp.topic, tp.partition) for tp in probe}, time.monotonic() + 1.0
    while waiting and time.monotonic() < idle_until:
        msg = consumer.poll(0.1)
        if msg is None:
            continue
        key = (msg.topic(), msg.partition())
        if msg.error():
            if msg.error().code() == ck.KafkaError._PARTITION_EOF:
                waiting.discard(key)
            continue
        low, high = marks[key]
        marks[key] = (low, max(high, msg.offset() + 1))
        idle_until = time.monotonic() + 1.0
    consumer.unassign()
    return marks


def _groups(bus: KafkaEventBus, admin: Any) -> list[str]:
    prefix = bus.group_id("")
    listed = admin.list_consumer_groups(request_timeout=bus.timeout_s).result(bus.timeout_s + 5)
    return sorted(g.group_id[len(prefix):] for g in listed.valid
                  if g.group_id.startswith(prefix) and len(g.group_id) > len(prefix))


def kafka_stats(bus: KafkaEventBus, subs: Sequence[str] = ()) -> dict[str, Any]:
    """Topics of the namespace and every subscription's group lag (``subs``: only these)."""
    ck = _client()
    from .kafka import mapped_errors
    from .kafka_deadletters import list_dead_letters

    admin = bus.admin()
    consumer = ck.Consumer({"bootstrap.servers": bus.bootstrap, "group.id": "chi-stats",
                            "enable.auto.commit": False, "enable.partition.eof": True,
                            **bus.client_options})
    try:
        with mapped_errors(bus.bootstrap):
            meta = consumer.list_topics(timeout=bus.timeout_s).topics
            prefix, dlq = f"{bus.namespace}.", f"{bus.namespace}._dlq."
            chi = sorted(t for t in meta if t.startswith(prefix) and not t.startswith(f"{prefix}_"))
            names = list(dict.fromkeys(subs)) or sorted(
                {*_groups(bus, admin), *(t[len(dlq):] for t in meta if t.startswith(dlq))})
            for n in names:
                validate_name(n, "subscription")
            tps = [ck.TopicPartition(t, p) for t in chi for p in sorted(meta[t].partitions)]
            ends = _ends(bus, consumer, tps)
            committed = _committed(bus, admin, names)
            described = _members(bus, admin, names)
        topics = [{"topic": t[len(prefix):], "length": sum(e - lo for (tt, _), (lo, e)
                                                           in ends.items() if tt == t),
                   "first_id": None, "last_id": None, "first_event_time": None,
                   "last_event_time": None, "memory_bytes": None,
                   "groups": sum(1 for n in names if any(tt == t for tt, _ in committed[n]))}
                  for t in chi]
        out = []
        for n in names:
            parts: list[dict[str, Any]] = []
            lag: int | None = 0
            for (t, p), (low, end) in sorted(ends.items()):
                if not any(tt == t for tt, _ in committed[n]):
                    continue  # a topic this group never committed on: not one of its topics
                c = committed[n].get((t, p))
                plag = None if c is None and end > low else end - (low if c is None else c)
                parts.append({"topic": t[len(prefix):], "partition": p, "committed": c,
                              "end": end, "lag": plag})
                lag = None if lag is None or plag is None else lag + plag
            dead = len(list_dead_letters(bus, n, count=10**9, timeout_s=bus.timeout_s))
            out.append(_sub(n, registered=n in described, lag=lag,
                            topics=sorted({x["topic"] for x in parts}),
                            consumers=described.get(n), dead_letters=dead, partitions=parts))
    finally:
        consumer.close()
    return {"bus": "kafka", "server_time_ms": int(time.time() * 1000), "topics": topics,
            "subscriptions": out}


def _committed(bus: KafkaEventBus, admin: Any, names: list[str]
               ) -> dict[str, dict[tuple[str, int], int]]:
    ck = _client()
    out: dict[str, dict[tuple[str, int], int]] = {n: {} for n in names}
    for n in names:
        req = [ck.ConsumerGroupTopicPartitions(bus.group_id(n))]
        for fut in admin.list_consumer_group_offsets(req).values():
            for tp in fut.result(bus.timeout_s + 5).topic_partitions or ():
                if tp.offset >= 0 and tp.error is None:
                    out[n][(tp.topic, tp.partition)] = tp.offset
    return out


def _members(bus: KafkaEventBus, admin: Any, names: list[str]) -> dict[str, int]:
    """Members of each subscription's group that the broker knows (missing: no group)."""
    if not names:
        return {}
    groups = {bus.group_id(n): n for n in names}
    out = {}
    for gid, fut in admin.describe_consumer_groups(list(groups)).items():
        try:
            desc = fut.result(bus.timeout_s + 5)
        except _client().KafkaException:
            continue
        if str(desc.state).rsplit(".", 1)[-1] not in ("DEAD", "UNKNOWN"):
            out[groups[gid]] = len(desc.members)
    return out


# text --------------------------------------------------------------------------------------
def _v(x: Any) -> str:
    return "-" if x is None else str(x)


def render(stats: dict[str, Any]) -> Iterable[str]:
    """The statistics as the Redis ``stats`` tables, ``-`` where the bus has no value."""
    if stats["topics"]:
        yield f"{'TOPIC':<24} {'LENGTH':>9}"
        for t in stats["topics"]:
            yield f"{t['topic']:<24} {t['length']:>9}"
        yield ""
    yield (f"{'SUBSCRIPTION':<24} {'LAG':>8} {'PENDING':>8} {'CONS':>5} {'DELAYED':>8}"
           f" {'DLQ':>6}  TOPICS")
    for s in stats["subscriptions"]:
        lag = "?" if s["lag"] is None and stats["bus"] == "kafka" else _v(s["lag"])
        yield (f"{s['name']:<24} {lag:>8} {_v(s['pending']):>8} {_v(s['consumers']):>5}"
               f" {_v(s['delayed']):>8} {_v(s['dead_letters']):>6}  {','.join(s['topics']) or '-'}")
    if stats["bus"] == "kafka" and any(s["lag"] is None for s in stats["subscriptions"]):
        yield ""
        yield ("lag ?: a partition with records on which the group committed nothing yet"
               " (where it starts depends on start=new/earliest)")
    if stats["bus"] == "rabbitmq":
        yield ""
        yield ("LAG: ready messages; PENDING (unacknowledged) and DELAYED (retry queues) are"
               " not visible over AMQP")
