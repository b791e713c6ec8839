"""The event bus: publishing into one Redis stream per topic, and the event store."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from ..backend.connection import DEFAULT_URL, RetryPolicy, call_with_retry, client_url, connect
from ..backend.keys import Keys
from ..backend.partitions import PartitionRegistry
from ..events.codec import DEFAULT_MAX_EVENT_BYTES, Codec, Encoding
from ..events.event import Event
from ..events.partitioning import Declaration
from ..runtime.subscriptions import Subscription, SubscriptionOptions
from ..store.redis import RedisEventStore
from .acks import AckMode, Acks, acks_of, call_acks
from .writer import DEFAULT_CHUNK, DEFAULT_IDEMPOTENCY_TTL_MS, Writer, split_bus_options

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..events.filters import Filter
    from ..runtime.broker import StreamsBroker
    from ..runtime.deadletters import DeadLetter
    from ..runtime.subscriptions import Handler, Start

__all__ = ["EventBus"]

logger = logging.getLogger(__name__)

#: No retry: for writes a retry after a lost reply could repeat.
_ONCE = RetryPolicy(attempts=1)


class EventBus:
    """Publishes events and answers queries over one Redis database.

    Thread-safe: the underlying redis-py client pools connections.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = "chi",
        encoding: Encoding = "msgpack",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        idempotency_ttl_ms: int = DEFAULT_IDEMPOTENCY_TTL_MS,
        retry: RetryPolicy | None = None,
        acks: AckMode = "master",
        min_replicas: int = 1,
        ack_timeout_ms: int = 1_000,
    ) -> None:
        self.keys = Keys(namespace)
        #: ``acks="replicas"``: every publish returns once ``min_replicas`` replicas have
        #: its events, or raises NotReplicatedError after ``ack_timeout_ms`` (§3.4).
        self.acks = acks_of(acks, min_replicas, ack_timeout_ms)
        self._replica_acks = self.acks or Acks(min_replicas, ack_timeout_ms)
        self.codec = Codec(encoding, max_event_bytes)
        self.idempotency_ttl_ms = idempotency_ttl_ms
        self.retry = retry or RetryPolicy()
        #: Whether the client was made without asking the server about cluster mode
        #: (``connect(..., detect_cluster=False)``); :meth:`adopt_cluster` asks.
        self.cluster_unknown = False
        #: Partitioned topics (docs/design.md §15): declared here or in Redis, cached.
        self.partitions = PartitionRegistry(self.keys, lambda: self.client, self.call)
        self._bind(client)
        self.subscriptions: dict[str, Subscription] = {}
        #: Handlers by the name routing rules refer to (``@bus.handler("audit")``).
        self.handlers: dict[str, Handler] = {}
        self.broker: StreamsBroker | None = None

    @classmethod
    def from_url(
        cls, url: str = DEFAULT_URL, *, namespace: str = "chi", **options: Any
    ) -> EventBus:
        """A bus on a new client for ``url``; ``options`` go to :class:`EventBus`."""
        bus_opts = split_bus_options(options)
        return cls(connect(url, **options), namespace=namespace, **bus_opts)

    def _bind(self, client: redis.Redis) -> None:
        self.client = client
        self._url, self._password = client_url(client)
        #: The write path every publish (and archive write) goes through.
        self.writer = Writer(
            client, self.keys, self.codec, idempotency_ttl_ms=self.idempotency_ttl_ms,
            call=self.call, call_once=self.call_once,
        )
        self.writer.partitions = self.partitions
        self.store = RedisEventStore(self)

    def adopt_cluster(self) -> bool:
        """When the client is a plain one whose server runs in cluster mode (a bus built
        with ``connect(..., detect_cluster=False)``), switch to a cluster client; whether
        it did.  Call before the bus is used from other threads (a worker calls it at boot).
        """
        from ..backend.cluster import cluster_client_of
        from ..backend.connection import is_cluster_server

        self.cluster_unknown = False
        if type(self.client) is not redis.Redis or not is_cluster_server(self.client):
            return False
        plain = self.client
        self._bind(cluster_client_of(plain))  # type: ignore[arg-type]
        plain.close()
        return True

    @classmethod
    def embedded(cls, namespace: str = "chi", **bus_options: Any) -> EventBus:
        """A bus on its own in-process Redis (fakeredis with Lua): no server needed.

        The same code paths as a bus on a server, so retries, dead letters, replay,
        queries and stats behave the same; the data lives as long as the process.  Run its
        subscriptions with :class:`chi_redis.embedded.InProcessWorker`.  ``bus_options`` go
        to :class:`EventBus` (``encoding``, ``max_event_bytes``, ``idempotency_ttl_ms``,
        ``retry``).  Needs the extra ``embedded`` (``pip install 'chi-redis[embedded]'``);
        without it, raises :class:`~chi_redis.ChiError` naming it.
        """
        from ..backend.memory import embedded_client

        return cls(embedded_client(), namespace=namespace, **bus_options)

    def __repr__(self) -> str:
        return f"EventBus({self._url!r}, namespace={self.keys.ns!r})"

    @property
    def url(self) -> str:
        """The server's URL without credentials (for messages and logs)."""
        return self._url

    @property
    def namespace(self) -> str:
        """The key namespace."""
        return self.keys.ns

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` under the bus's retry policy, mapping redis-py errors to ChiErrors."""
        return call_with_retry(fn, self.retry, self._url, self._password)

    def call_once(self, fn: Any) -> Any:
        """Run ``fn()`` once, without retrying, mapping redis-py errors to ChiErrors.

        For writes that a retry after a lost reply would repeat (replay deliveries).
        """
        return call_with_retry(fn, _ONCE, self._url, self._password)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    # publishing ---------------------------------------------------------------------
    def declare_topic(
        self, topic: str, *, partitions: int, key: str, resize: bool = False
    ) -> Declaration:
        """Declare ``topic`` partitioned: its events spread over ``partitions`` streams by
        ``key`` (``"metadata.<key>"`` or ``"data.<field>"``), one key's events in one
        partition, handled in publish order by each subscription (docs/design.md §15).

        Stored in Redis, so every process and the CLI agree; declaring it again the same
        way does nothing.  Raises :class:`~chi_redis.ConfigError` when the topic already
        holds unpartitioned events or is declared otherwise (``resize=True`` changes the
        count, only while every partition is empty).
        """
        return self.partitions.declare(topic, partitions, key, resize=resize)

    def publish(
        self, event: Event, *, idempotency_key: str | None = None, acks: AckMode | None = None
    ) -> str:
        """Append ``event`` to its topic stream and index it; returns the stream id.

        One round trip.  With ``idempotency_key``, a second publish within the TTL writes
        nothing and returns the first stream id.  Publishing the same event id twice (a
        retry) also writes it once.  ``acks`` (default: the bus's): ``"replicas"`` returns
        once ``min_replicas`` replicas have the event (WAIT), else raises
        :class:`~chi_redis.NotReplicatedError` (written on the master, not confirmed).
        """
        idem = (idempotency_key,) if idempotency_key is not None else None
        return self.writer.write((event,), idem, acks=self._acks(acks))[0]

    def publish_batch(
        self, events: Sequence[Event], *, chunk_size: int = DEFAULT_CHUNK,
        acks: AckMode | None = None,
    ) -> list[str]:
        """Publish ``events`` in order, pipelined; one round trip per ``chunk_size`` events.

        Every event is validated and encoded before anything is sent.  When a chunk fails,
        raises :class:`PublishError` whose ``written`` maps event indexes to stream ids and
        whose ``failed`` lists the indexes not written.  ``acks="replicas"``: each round
        trip waits for the replicas; :class:`~chi_redis.NotReplicatedError` names the
        events written but not confirmed (``unconfirmed``) and those not sent (``failed``).
        """
        return self.writer.write_batch(events, chunk_size, acks=self._acks(acks))

    def _acks(self, acks: AckMode | None) -> Acks | None:
        return call_acks(acks, self.acks, self._replica_acks)

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
        time_limit_ms: int | None = None,
        start: Start = "new",
        dedupe: bool = False,
        dedupe_ttl_ms: int = 24 * 3600 * 1000,
        throws: tuple[type[BaseException], ...] = (),
        batch_size: int | None = None,
        batch_wait_ms: int | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register ``fn(event)`` (or ``fn(event, delivery)``, sync or async) as a subscription.

        The name is the consumer group and the Dramatiq queue/actor: renaming is a
        migration.  ``priority``: higher runs first when workers are saturated.
        ``batch_size=N``: ``fn(events)`` (or ``fn(events, deliveries)``) receives a list of
        up to N events gathered within ``batch_wait_ms`` (default 100), one Dramatiq message
        per batch; it may raise :class:`~chi_redis.BatchFailed` naming the events that failed
        (docs/design.md §5.10).
        """
        options = SubscriptionOptions(
            max_retries=max_retries, min_backoff_ms=min_backoff_ms, max_backoff_ms=max_backoff_ms,
            max_deliveries=max_deliveries, time_limit_ms=time_limit_ms, dedupe=dedupe,
            dedupe_ttl_ms=dedupe_ttl_ms, throws=tuple(throws), batch_size=batch_size,
            batch_wait_ms=batch_wait_ms,
        )
        options.validate()  # at the decorator, before any handler is given

        def register(fn: Handler) -> Handler:
            sub = Subscription(
                name=name, handler=fn, types=tuple(types), topics=tuple(topics), filter=filter,
                priority=priority, start=start, options=options,
            )
            if name in self.subscriptions:
                raise ValueError(f"subscription {name!r} is already registered")
            self.subscriptions[name] = sub
            if self.broker is not None:
                self.broker.declare_subscription(sub)
            return fn

        return register

    def handler(self, name: str) -> Callable[[Handler], Handler]:
        """Register ``fn`` under ``name`` for the config's routing rules (``handler: name``).

        Registering subscribes nothing: a routing rule naming it does (chi_redis.routing).
        """
        if not isinstance(name, str) or not name:
            raise ValueError("a handler name must be a non-empty string")

        def register(fn: Handler) -> Handler:
            if self.handlers.get(name, fn) is not fn:
                raise ValueError(f"handler {name!r} is already registered")
            self.handlers[name] = fn
            return fn

        return register

    def attach(self, broker: StreamsBroker) -> None:
        """Serve ``broker`` (StreamsBroker does this when it is created): every subscription
        registered so far is declared on it now, later ones as they are registered."""
        self.broker = broker
        for sub in self.subscriptions.values():
            broker.declare_subscription(sub)

    def dead_letters(
        self, sub: str, *, after: str | None = None, count: int = 100
    ) -> list[DeadLetter]:
        """Dead letters of subscription ``sub``, oldest first."""
        from ..ops.deadletters import list_dead_letters

        return list_dead_letters(self, sub, after=after, count=count)

    def redrive(self, sub: str, ids: list[str] | None = None) -> int:
        """Put dead letters of ``sub`` (all, or ``ids``) back on its queue once; returns count."""
        from ..ops.deadletters import redrive

        return redrive(self, sub, ids)
