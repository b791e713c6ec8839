"""AMQP pieces of the RabbitMQ bus: names, routing patterns, the wire format, the topology.

Kept apart from :mod:`.rabbitmq` (the bus) and :mod:`.rabbitmq_worker` (the consumers) so
both use one definition of every exchange, queue and header (docs/buses.md "RabbitMQ").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ChiError, DecodeError
from ..events.codec import Codec
from ..events.event import Event
from ..runtime.subscriptions import Subscription, SubscriptionOptions
from . import BusUnavailableError, NotSupportedError

__all__ = [
    "DEFAULT_MAX_DELIVERIES",
    "DEFAULT_URL",
    "Names",
    "amqp_pattern",
    "backoff_ms",
    "declare_exchanges",
    "declare_subscription",
    "decode_message",
    "encode_message",
    "header_str",
    "pika_module",
]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: ``x-delivery-limit`` of a subscription queue when ``max_deliveries`` is not given: how
#: often a message may come back unacknowledged (its worker died, or stopped with it
#: prefetched) before RabbitMQ dead-letters it (reason ``delivery_limit``).
DEFAULT_MAX_DELIVERIES = 20
_CONTENT_TYPES = {b"mp": "application/msgpack", b"js": "application/json"}


def pika_module() -> Any:
    """The ``pika`` module, or a :class:`NotSupportedError` naming the extra to install."""
    try:
        import pika
    except ImportError:
        raise NotSupportedError(
            "the RabbitMQ bus needs pika: pip install 'chi-redis[rabbitmq]'"
        ) from None
    return pika


@dataclass(frozen=True)
class Names:
    """Every exchange and queue name of one bus (``exchange``) and namespace."""

    exchange: str
    namespace: str

    @property
    def topics_exchange(self) -> str:
        """The headers exchange that routes by ``chi-topic`` (for ``topics=[...]``)."""
        return f"{self.exchange}.topics"

    @property
    def dead_exchange(self) -> str:
        """The direct dead-letter exchange; the routing key is the subscription's queue."""
        return f"{self.exchange}.dead"

    def queue(self, sub: str) -> str:
        return f"{self.namespace}.{sub}"

    def dead_queue(self, sub: str) -> str:
        return f"{self.namespace}.{sub}.dead"

    def retry_queue(self, sub: str, delay_ms: int) -> str:
        return f"{self.namespace}.{sub}.retry.{delay_ms}"


def amqp_pattern(glob: str) -> str:
    """A chi type glob as an AMQP topic binding key: ``*`` stays ``*`` (one segment),
    ``**`` becomes ``#`` (zero or more segments); names are unchanged."""
    return ".".join("#" if seg == "**" else seg for seg in glob.split("."))


def backoff_ms(options: SubscriptionOptions, failures: int) -> int:
    """The delay before the retry that follows the ``failures``-th failure (1-based)."""
    step = options.min_backoff_ms * (2 ** min(max(failures - 1, 0), 40))
    return int(min(step, options.max_backoff_ms))


def retry_delays(options: SubscriptionOptions) -> list[int]:
    """Every distinct retry delay of a subscription (one delay queue each)."""
    return sorted({backoff_ms(options, n) for n in range(1, options.max_retries + 1)})


# the wire format ------------------------------------------------------------------------
def encode_message(codec: Codec, event: Event) -> tuple[str, bytes, Any]:
    """``(routing key, body, properties)`` of ``event``: the codec's checks and encoding.

    Raises the codec's :class:`~chi_redis.errors.ValidationError` (and
    :class:`~chi_redis.errors.PayloadTooLargeError`) before anything is sent.
    """
    pika = pika_module()
    id_, type_, ts, version, meta, data = codec.encode_parts(event)
    headers = {"chi-topic": event.topic, "chi-ts": ts, "chi-ver": version,
               "chi-meta": meta.decode(), "chi-enc": codec.enc_tag.decode()}
    props = pika.BasicProperties(
        delivery_mode=2, message_id=id_, type=type_, timestamp=ts // 1_000_000,
        content_type=_CONTENT_TYPES[codec.enc_tag], headers=headers,
    )
    return type_, data, props


def header_str(value: Any, default: str = "") -> str:
    """A header or property value as text (pika gives str, or bytes when not UTF-8)."""
    if value is None:
        return default
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _raw(value: Any, name: str) -> bytes:
    if value is None:
        raise KeyError(name)
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def decode_message(codec: Codec, props: Any, body: bytes, queue: str) -> tuple[Event, bytes]:
    """The event a message carries and its raw metadata JSON (for filters).

    Anything that is not a chi event (a missing header, a bad value, a corrupt payload)
    raises :class:`DecodeError` naming the queue and the message id.
    """
    headers = props.headers if isinstance(props.headers, dict) else {}
    msg_id = header_str(props.message_id)[:128]
    try:
        meta = _raw(headers.get("chi-meta", "{}"), "chi-meta")
        fields = {
            b"id": _raw(props.message_id, "message_id"), b"type": _raw(props.type, "type"),
            b"ts": _raw(headers.get("chi-ts"), "chi-ts"),
            b"ver": _raw(headers.get("chi-ver", "1.0"), "chi-ver"), b"meta": meta,
            b"enc": _raw(headers.get("chi-enc", "mp"), "chi-enc"), b"data": body,
        }
        topic = header_str(headers.get("chi-topic"))
    except KeyError as exc:
        raise DecodeError(f"missing {exc.args[0]!r}", stream=queue, entry_id=msg_id) from None
    return codec.decode(fields, topic=topic, stream=queue, entry_id=msg_id), meta


def message_fields(props: Any, body: bytes) -> tuple[str, dict[str, bytes]]:
    """``(chi topic, fields)`` of a message, fields named as
    :meth:`~chi_redis.events.codec.Codec.envelope` reads them (missing ones left out: the
    envelope then reports the message as undecodable instead of failing)."""
    headers = props.headers if isinstance(props.headers, dict) else {}
    raw = {"id": props.message_id, "type": props.type, "ts": headers.get("chi-ts"),
           "ver": headers.get("chi-ver", "1.0"), "meta": headers.get("chi-meta", "{}"),
           "enc": headers.get("chi-enc", "mp")}
    fields = {k: _raw(v, k) for k, v in raw.items() if v is not None}
    fields["data"] = body
    return header_str(headers.get("chi-topic")), fields


# topology -------------------------------------------------------------------------------
def declare_exchanges(channel: Any, names: Names) -> None:
    """The durable exchanges of a bus (idempotent): topic, topics (headers) and dead."""
    channel.exchange_declare(names.exchange, exchange_type="topic", durable=True)
    channel.exchange_declare(names.topics_exchange, exchange_type="headers", durable=True)
    # Every event reaches the headers exchange too; only topic bindings take from it.
    channel.exchange_bind(names.topics_exchange, names.exchange, routing_key="#")
    channel.exchange_declare(names.dead_exchange, exchange_type="direct", durable=True)


def subscription_arguments(sub: Subscription, names: Names) -> dict[str, Any]:
    """The arguments of a subscription's quorum queue."""
    limit = sub.options.max_deliveries or DEFAULT_MAX_DELIVERIES
    return {"x-queue-type": "quorum", "x-delivery-limit": limit,
            "x-dead-letter-exchange": names.dead_exchange,
            "x-dead-letter-routing-key": names.queue(sub.name)}


def declare_subscription(channel: Any, names: Names, sub: Subscription) -> None:
    """Declare and bind a subscription's queues (idempotent while its options stay).

    Type globs bind the topic exchange (:func:`amqp_pattern`); a subscription with only
    ``topics`` binds the headers exchange on ``chi-topic``.  Bindings are never removed:
    a subscription whose types change keeps its old bindings until its queue is deleted.
    """
    queue, dead = names.queue(sub.name), names.dead_queue(sub.name)
    try:
        channel.queue_declare(dead, durable=True)
        channel.queue_bind(dead, names.dead_exchange, routing_key=queue)
        channel.queue_declare(queue, durable=True,
                              arguments=subscription_arguments(sub, names))
        for delay in retry_delays(sub.options):
            channel.queue_declare(names.retry_queue(sub.name, delay), durable=True, arguments={
                "x-message-ttl": delay, "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue})
    except _channel_errors() as exc:
        raise ChiError(
            f"cannot declare the queues of subscription {sub.name!r}: {exc} (a queue of that"
            " name exists with other arguments? delete it, or rename the subscription)"
        ) from None
    if sub.types:
        for glob in sub.types:
            channel.queue_bind(queue, names.exchange, routing_key=amqp_pattern(glob))
    else:
        for topic in sub.topics:
            channel.queue_bind(queue, names.topics_exchange,
                               arguments={"x-match": "all", "chi-topic": topic})


def delete_subscription(channel: Any, names: Names, sub: Subscription) -> None:
    """Delete a subscription's queues (its events and dead letters with them)."""
    for delay in retry_delays(sub.options):
        channel.queue_delete(names.retry_queue(sub.name, delay))
    channel.queue_delete(names.queue(sub.name))
    channel.queue_delete(names.dead_queue(sub.name))


def _channel_errors() -> tuple[type[BaseException], ...]:
    pika = pika_module()
    return (pika.exceptions.ChannelClosedByBroker,)


def unavailable(url: str, exc: BaseException) -> BusUnavailableError:
    """The error for a broker that cannot be reached (the URL without its password)."""
    from ..errors import redact_url

    detail = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    return BusUnavailableError(f"cannot reach RabbitMQ at {redact_url(url)} ({detail}): is it"
                               " running? (bus.rabbitmq.url, CHI_RABBITMQ_URL)")
