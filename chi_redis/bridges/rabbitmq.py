"""The RabbitMQ bus (``bus.type: rabbitmq``): chi events over AMQP 0-9-1, with pika.

Publishing: each event goes to one durable topic exchange, persistent (delivery mode 2),
with routing key = event type, message id = event id and headers carrying topic, time,
version, metadata and payload encoding (:mod:`.amqp`); the channel is in confirm mode, so
:meth:`RabbitMQEventBus.publish` returns only once the broker has taken the message.

Consuming: one durable quorum queue per subscription, bound by its type globs (``*`` →
``*``, ``**`` → ``#``) or, with only ``topics``, by ``chi-topic`` on a headers exchange;
:class:`~chi_redis.bridges.rabbitmq_worker.RabbitMQWorker` runs the same handlers as
:class:`~chi_redis.EventBus`, with retries through per-delay TTL queues and dead letters
in a queue per subscription.  Queries and replay stay on the event store (docs/buses.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import redact_url
from ..events.codec import DEFAULT_MAX_EVENT_BYTES, Codec, Encoding
from ..events.event import Event
from ..events.filters import Filter
from ..runtime.subscriptions import Handler, Subscription, SubscriptionOptions
from . import BusUnavailableError, NotSupportedError
from .amqp import (
    DEFAULT_URL,
    Names,
    declare_exchanges,
    declare_subscription,
    delete_subscription,
    encode_message,
    pika_module,
    unavailable,
)

if TYPE_CHECKING:
    from ..config import Config
    from ..runtime.deadletters import DeadLetter
    from .rabbitmq_worker import RabbitMQWorker

__all__ = ["DEFAULT_URL", "RabbitMQEventBus"]

logger = logging.getLogger(__name__)


class RabbitMQEventBus:
    """Publishes events to RabbitMQ and runs subscriptions' handlers on its queues.

    Thread-safe: publishes share one connection under a lock (pika's connections are not
    thread-safe); each worker thread has its own connection.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        namespace: str = "chi",
        exchange: str = "chi-events",
        encoding: Encoding = "msgpack",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        heartbeat_s: int = 60,
        prefetch: int = 4,
    ) -> None:
        self.url = url
        self.prefetch = prefetch
        self.names = Names(exchange, namespace)
        self.codec = Codec(encoding, max_event_bytes)
        self.heartbeat_s = heartbeat_s
        self.subscriptions: dict[str, Subscription] = {}
        self._lock = threading.Lock()
        self._conn: Any = None
        self._channel: Any = None

    @classmethod
    def from_config(cls, config: Config, *, namespace: str | None = None) -> RabbitMQEventBus:
        """The bus ``config.bus`` describes (``bus.rabbitmq``; ``namespace`` wins if given)."""
        r = config.bus.rabbitmq
        return cls(
            r.url, namespace=namespace or config.namespace, exchange=r.exchange,
            encoding=config.bus.encoding, max_event_bytes=config.bus.max_event_bytes,
            heartbeat_s=r.heartbeat_s, prefetch=r.prefetch,
        )

    def __repr__(self) -> str:
        return (f"RabbitMQEventBus({redact_url(self.url)!r}, namespace={self.namespace!r},"
                f" exchange={self.names.exchange!r})")

    @property
    def namespace(self) -> str:
        """The namespace: the prefix of every subscription's queue names."""
        return self.names.namespace

    # connections ----------------------------------------------------------------------
    def connect(self, role: str = "admin") -> Any:
        """A new pika ``BlockingConnection`` to the broker (the caller closes it), named
        ``chi <namespace> <role>`` (``rabbitmqctl list_connections name``)."""
        pika = pika_module()
        params = pika.URLParameters(self.url)
        params.client_properties = {"connection_name": f"chi {self.namespace} {role}"}
        params.heartbeat = self.heartbeat_s
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.blocked_connection_timeout = 30
        try:
            return pika.BlockingConnection(params)
        except pika.exceptions.AMQPError as exc:
            raise unavailable(self.url, exc) from None

    def _publish_channel(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            self._reset()
            self._conn = self.connect("publisher")
            channel = self._conn.channel()
            channel.confirm_delivery()
            declare_exchanges(channel, self.names)
            self._channel = channel
        return self._channel

    def _reset(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # already broken: nothing to hand back
                logger.debug("closing a broken RabbitMQ connection failed", exc_info=True)

    def close(self) -> None:
        """Close the publishing connection (workers have their own)."""
        with self._lock:
            self._reset()

    # publishing -------------------------------------------------------------------------
    def publish(self, event: Event, *, idempotency_key: str | None = None) -> str:
        """Publish ``event`` (confirmed, persistent); returns its event id.

        ``idempotency_key`` is refused (:class:`NotSupportedError`): RabbitMQ keeps no
        record of what was published.  A publish whose confirm is lost is sent again once
        on a new connection, so an event may arrive twice (handlers are at-least-once).
        """
        if idempotency_key is not None:
            raise NotSupportedError("idempotency_key is not supported on the RabbitMQ bus:"
                                    " RabbitMQ keeps no record of published keys; deduplicate"
                                    " in the handler, by event id")
        self._send([encode_message(self.codec, event)])
        return event.id

    def publish_batch(self, events: Sequence[Event]) -> list[str]:
        """Publish ``events`` in order, each confirmed; all are encoded (and checked) first."""
        messages = [encode_message(self.codec, e) for e in events]
        self._send(messages)
        return [e.id for e in events]

    def _send(self, messages: list[tuple[str, bytes, Any]]) -> None:
        pika = pika_module()
        with self._lock:
            sent = 0
            for attempt in (1, 2):
                try:
                    channel = self._publish_channel()
                    for key, body, props in messages[sent:]:
                        channel.basic_publish(self.names.exchange, key, body, props)
                        sent += 1
                    return
                except pika.exceptions.NackError as exc:
                    self._reset()
                    raise BusUnavailableError(f"RabbitMQ refused a publish: {exc}") from None
                except (pika.exceptions.AMQPError, BusUnavailableError, OSError) as exc:
                    self._reset()
                    if attempt == 2:
                        if isinstance(exc, BusUnavailableError):
                            raise
                        raise unavailable(self.url, exc) from None
                    logger.warning("RabbitMQ publish failed (%s); connecting again",
                                   type(exc).__name__)

    # subscriptions ----------------------------------------------------------------------
    def subscribe(
        self,
        name: str,
        *,
        types: list[str] | tuple[str, ...] = (),
        topics: list[str] | tuple[str, ...] = (),
        filter: Filter | None = None,
        priority: int = 0,
        max_retries: int = 5,
        min_backoff_ms: int = 1_000,
        max_backoff_ms: int = 300_000,
        max_deliveries: int | None = None,
        throws: tuple[type[BaseException], ...] = (),
        **unsupported: Any,
    ) -> Callable[[Handler], Handler]:
        """Register ``fn(event)`` or ``fn(event, delivery)`` as subscription ``name``.

        The options of :meth:`chi_redis.EventBus.subscribe`; ``max_deliveries`` is the
        queue's ``x-delivery-limit`` (deliveries not acknowledged: crashed workers).
        Options this bus cannot honour raise :class:`NotSupportedError`: ``priority``
        other than 0, ``start`` other than ``"new"``, ``dedupe``, ``time_limit_ms``,
        ``batch_size`` (docs/buses.md).
        """
        _refuse(priority, unsupported)
        options = SubscriptionOptions(
            max_retries=max_retries, min_backoff_ms=min_backoff_ms,
            max_backoff_ms=max_backoff_ms, max_deliveries=max_deliveries, throws=tuple(throws),
        )
        options.validate()

        def register(fn: Handler) -> Handler:
            sub = Subscription(name=name, handler=fn, types=tuple(types), topics=tuple(topics),
                               filter=filter, options=options)
            if name in self.subscriptions:
                raise ValueError(f"subscription {name!r} is already registered")
            self.subscriptions[name] = sub
            return fn

        return register

    def declare(self) -> None:
        """Declare the exchanges and every registered subscription's queues (idempotent).

        Events published before a subscription's queue exists do not reach it (as with
        ``start="new"`` on Redis): workers declare at start, or call this first.
        """
        conn = self.connect()
        try:
            channel = conn.channel()
            declare_exchanges(channel, self.names)
            for sub in self.subscriptions.values():
                declare_subscription(channel, self.names, sub)
        finally:
            _close(conn)

    def delete(self, *, exchanges: bool = False) -> None:
        """Delete every registered subscription's queues (events and dead letters with
        them) and, with ``exchanges``, the bus's exchanges."""
        conn = self.connect()
        try:
            channel = conn.channel()
            for sub in self.subscriptions.values():
                delete_subscription(channel, self.names, sub)
            if exchanges:
                for ex in (self.names.topics_exchange, self.names.exchange,
                           self.names.dead_exchange):
                    channel.exchange_delete(ex)
        finally:
            _close(conn)

    def worker(self, *, threads: int = 4, prefetch: int | None = None) -> RabbitMQWorker:
        """The consumers of every registered subscription: ``threads`` connections, each
        with ``prefetch`` (default: the bus's) unacknowledged messages at most
        (``basic.qos``)."""
        from .rabbitmq_worker import RabbitMQWorker

        return RabbitMQWorker(self, threads=threads, prefetch=prefetch or self.prefetch)

    # dead letters -----------------------------------------------------------------------
    def dead_letters(self, sub: str, *, count: int = 100) -> list[DeadLetter]:
        """Up to ``count`` dead letters of ``sub``, oldest first (left in their queue)."""
        from .rabbitmq_deadletters import list_dead_letters

        return list_dead_letters(self, sub, count)

    def redrive(self, sub: str, ids: list[str] | None = None) -> int:
        """Put dead letters of ``sub`` (all, or those whose dead-letter or event id is in
        ``ids``) back on its queue with a fresh retry budget; returns how many."""
        from .rabbitmq_deadletters import redrive

        return redrive(self, sub, ids)


def _refuse(priority: int, unsupported: dict[str, Any]) -> None:
    """Refuse the EventBus options this bus cannot honour, naming the first one."""
    if priority:
        raise NotSupportedError("priority is not supported on the RabbitMQ bus (quorum queues"
                                " have no message priorities)")
    allowed = {"start": "new", "dedupe": False, "time_limit_ms": None, "batch_size": None,
               "batch_wait_ms": None, "dedupe_ttl_ms": None}
    for key, value in unsupported.items():
        if key not in allowed:
            raise TypeError(f"subscribe() got an unexpected keyword argument {key!r}")
        if value != allowed[key] and not (key == "dedupe_ttl_ms" and isinstance(value, int)):
            shown = value.isoformat() if isinstance(value, datetime) else repr(value)
            raise NotSupportedError(f"{key}={shown} is not supported on the RabbitMQ bus"
                                    " (docs/buses.md)")


def _close(conn: Any) -> None:
    if conn.is_open:
        conn.close()
