"""``chi-redis tail`` on the Kafka bus: follow chi topics with a group-less consumer.

Each partition of each topic is assigned at its end when the tail starts, so only records
written after that are shown; nothing is committed and no consumer group is involved.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

from .kafka import _client, kafka_topic, mapped_errors

if TYPE_CHECKING:
    from .kafka import KafkaEventBus

__all__ = ["follow"]

#: Header -> the str field name of an entry (``Codec.envelope`` reads these).
_FIELDS = {"chi-id": "id", "chi-type": "type", "chi-ts": "ts", "chi-ver": "ver",
           "chi-enc": "enc", "chi-meta": "meta"}


def follow(bus: KafkaEventBus, topics: Sequence[str], *, timeout_s: float = 30.0
           ) -> Generator[tuple[str, bytes, dict[str, bytes]], None, None]:
    """``(chi topic, b"PARTITION:OFFSET", fields)`` of every new record of ``topics``,
    as they arrive (forever: the caller stops)."""
    ck = _client()
    names = {kafka_topic(bus.namespace, t): t for t in topics}
    bus.ensure_topics(list(names))
    consumer = ck.Consumer({"bootstrap.servers": bus.bootstrap, "group.id": "chi-tail",
                            "enable.auto.commit": False, **bus.client_options})
    try:
        parts = []
        for name in names:
            with mapped_errors(bus.bootstrap):
                meta = consumer.list_topics(name, timeout=timeout_s).topics[name]
            parts += [ck.TopicPartition(name, p, ck.OFFSET_END) for p in sorted(meta.partitions)]
        consumer.assign(parts)
        while True:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            fields = {_FIELDS[k]: v for k, v in (msg.headers() or []) if k in _FIELDS and v}
            fields["data"] = msg.value() or b""
            yield names[msg.topic()], f"{msg.partition()}:{msg.offset()}".encode(), fields
    finally:
        consumer.close()
