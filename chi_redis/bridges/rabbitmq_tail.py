"""``chi-redis tail`` on the RabbitMQ bus: follow chi topics through a queue of its own.

The tail declares a server-named, exclusive, auto-deleted queue bound to the bus's topics
exchange by ``chi-topic`` (one binding per topic), so it sees every event published to
those topics from then on, beside the subscriptions' queues and without taking anything
from them; the queue goes away with the tail's connection.  Nothing older can be shown:
a queue holds only what arrived after it was declared.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

from .amqp import declare_exchanges, message_fields

if TYPE_CHECKING:
    from .rabbitmq import RabbitMQEventBus

__all__ = ["follow"]


def follow(bus: RabbitMQEventBus, topics: Sequence[str]
           ) -> Generator[tuple[str, bytes, dict[str, bytes]], None, None]:
    """``(chi topic, event id, fields)`` of every event published to ``topics`` once the
    queue is bound, as they arrive (forever: the caller stops)."""
    conn = bus.connect("tail")
    try:
        channel = conn.channel()
        declare_exchanges(channel, bus.names)
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for t in dict.fromkeys(topics):
            channel.queue_bind(queue, bus.names.topics_exchange,
                               arguments={"x-match": "all", "chi-topic": t})
        for method, props, body in channel.consume(queue, auto_ack=True, inactivity_timeout=0.5):
            if method is None:
                continue
            topic, fields = message_fields(props, body)
            yield topic, fields.get("id", b"-"), fields
    finally:
        if conn.is_open:
            conn.close()
