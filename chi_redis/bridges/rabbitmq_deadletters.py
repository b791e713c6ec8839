"""Dead letters of the RabbitMQ bus: each subscription's ``<namespace>.<sub>.dead`` queue.

Dead letters the worker writes carry ``chi-reason`` (``decode``, ``retries_exhausted``,
``not_retryable``), ``chi-error-type``, ``chi-error`` and ``chi-dl-id``; those RabbitMQ
itself dead-letters (a message delivered ``x-delivery-limit`` times without an ack: its
workers kept dying) carry only RabbitMQ's ``x-death`` header, whose reason is shown
(``delivery_limit``).  Listing takes messages without acknowledging them and closes the
channel, which puts them back where they were.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError
from ..events.names import validate_name
from ..runtime.deadletters import DeadLetter
from .amqp import header_str, message_fields, pika_module
from .rabbitmq_worker import DEAD_HEADERS, _int, _with_headers

if TYPE_CHECKING:
    from .rabbitmq import RabbitMQEventBus

__all__ = ["count_dead_letters", "dead_letter_of", "list_dead_letters", "purge", "redrive",
           "show"]


def _x_death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return {}


def dead_letter_of(sub: str, queue: str, props: Any) -> DeadLetter:
    """The :class:`DeadLetter` a message of the dead-letter queue stands for."""
    headers = props.headers if isinstance(props.headers, dict) else {}
    death = _x_death(headers)
    event_id = header_str(props.message_id)
    reason = header_str(headers.get("chi-reason")) or header_str(death.get("reason"), "unknown")
    dead_ms = _int(headers.get("chi-dead-ms"))
    when = death.get("time")
    if not dead_ms and isinstance(when, datetime):
        dead_ms = int(when.timestamp() * 1000)
    deliveries = _int(death.get("count")) or _int(headers.get("x-delivery-count"))
    attempts = _int(headers.get("chi-attempts")) or deliveries
    return DeadLetter(
        id=header_str(headers.get("chi-dl-id")) or event_id, subscription=sub, reason=reason,
        error_type=header_str(headers.get("chi-error-type")),
        error=header_str(headers.get("chi-error")), traceback="", event_id=event_id,
        type=header_str(props.type), topic=header_str(headers.get("chi-topic")),
        source_stream=queue, source_id=event_id, deliveries=deliveries, attempts=attempts,
        first_failure_ms=dead_ms, last_failure_ms=dead_ms, kind="event",
    )


def _queue_depth(channel: Any, queue: str, sub: str) -> int:
    pika = pika_module()
    try:
        frame = channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        raise NotFoundError(f"unknown subscription {sub!r}: no dead-letter queue {queue!r}"
                            " (no worker declared it yet)") from None
    return int(frame.method.message_count)


def list_dead_letters(bus: RabbitMQEventBus, sub: str, count: int) -> list[DeadLetter]:
    """Up to ``count`` dead letters of ``sub``, oldest first, left in their queue."""
    validate_name(sub, "subscription")
    queue = bus.names.dead_queue(sub)
    conn = bus.connect()
    try:
        channel = conn.channel()
        depth = _queue_depth(channel, queue, sub)
        out: list[DeadLetter] = []
        for _ in range(min(depth, count)):
            method, props, _body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            out.append(dead_letter_of(sub, queue, props))
        channel.close()  # every message taken goes back, in its place
        return out
    finally:
        if conn.is_open:
            conn.close()


def redrive(bus: RabbitMQEventBus, sub: str, ids: list[str] | None) -> int:
    """Move dead letters of ``sub`` (all, or those whose dead-letter or event id is in
    ``ids``) back to its queue with a fresh retry budget; returns how many."""
    validate_name(sub, "subscription")
    queue, target = bus.names.dead_queue(sub), bus.names.queue(sub)
    wanted = set(ids) if ids is not None else None
    conn = bus.connect()
    moved = 0
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        for _ in range(_queue_depth(channel, queue, sub)):
            method, props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            dl = dead_letter_of(sub, queue, props)
            if wanted is not None and not ({dl.id, dl.event_id} & wanted):
                continue  # left unacknowledged: back in place when the channel closes
            headers = {k: v for k, v in (props.headers or {}).items()
                       if k not in DEAD_HEADERS and k not in ("chi-retries", "x-death")}
            channel.basic_publish("", target, body, _with_headers(props, headers))
            channel.basic_ack(method.delivery_tag)
            moved += 1
        channel.close()
        return moved
    finally:
        if conn.is_open:
            conn.close()


def count_dead_letters(bus: RabbitMQEventBus, sub: str) -> int:
    """How many messages ``sub``'s dead-letter queue holds."""
    validate_name(sub, "subscription")
    conn = bus.connect()
    try:
        return _queue_depth(conn.channel(), bus.names.dead_queue(sub), sub)
    finally:
        if conn.is_open:
            conn.close()


def _event(bus: RabbitMQEventBus, props: Any, body: bytes) -> dict[str, Any]:
    """The event a dead letter holds, as ``chi-redis tail`` prints it (``stream_id`` is
    the event id: there is no stream; a message that is not a chi event gives ``error``)."""
    topic, fields = message_fields(props, body)
    return bus.codec.envelope(topic, fields.get("id", b"-"), fields)


def show(bus: RabbitMQEventBus, sub: str, ref: str) -> tuple[DeadLetter, dict[str, Any]]:
    """The dead letter of ``sub`` whose dead-letter id or event id is ``ref``, and its event
    (left in its queue)."""
    validate_name(sub, "subscription")
    queue = bus.names.dead_queue(sub)
    conn = bus.connect()
    try:
        channel = conn.channel()
        hits = []
        for _ in range(_queue_depth(channel, queue, sub)):
            method, props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            dl = dead_letter_of(sub, queue, props)
            if ref in (dl.id, dl.event_id):
                hits.append((dl, _event(bus, props, body)))
        channel.close()  # every message taken goes back, in its place
    finally:
        if conn.is_open:
            conn.close()
    if not hits:
        raise NotFoundError(f"no dead letter {ref!r} in subscription {sub!r} on the RabbitMQ bus")
    if len(hits) > 1:
        raise NotFoundError(f"event {ref!r} is in {len(hits)} dead letters of {sub!r}: give a"
                            " dead-letter id (dlq list)")
    return hits[0]


def purge(bus: RabbitMQEventBus, sub: str, before_ms: int | None = None) -> int:
    """Delete the dead letters of ``sub`` (only those dead-lettered before ``before_ms``,
    if given); returns how many."""
    validate_name(sub, "subscription")
    queue = bus.names.dead_queue(sub)
    conn = bus.connect()
    try:
        channel = conn.channel()
        depth = _queue_depth(channel, queue, sub)
        if before_ms is None:
            return int(channel.queue_purge(queue).method.message_count)
        n = 0
        for _ in range(depth):
            method, props, _body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            if dead_letter_of(sub, queue, props).last_failure_ms < before_ms:
                channel.basic_ack(method.delivery_tag)
                n += 1
        channel.close()  # the others go back, in their place
        return n
    finally:
        if conn.is_open:
            conn.close()
