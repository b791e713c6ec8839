"""The asyncio event bus: :class:`EventBus`'s publishing on ``redis.asyncio``.

Same Redis layout, same publish script, same validation, retry policy and errors as the
synchronous bus; queries stay on the synchronous ``EventBus.store``.  On Redis Cluster the
bus switches to ``redis.asyncio.cluster.RedisCluster`` at its first publish
(:meth:`AsyncEventBus.adopt_cluster`), as the sync bus does when it connects.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..backend.connection import (
    DEFAULT_URL,
    RetryPolicy,
    acall_with_retry,
    client_url,
    connect_async,
)
from ..backend.keys import Keys
from ..backend.partitions import PartitionRegistry
from ..events.codec import DEFAULT_MAX_EVENT_BYTES, Codec, Encoding
from ..events.event import Event
from .acks import AckMode, Acks, acks_of, call_acks
from .writer import DEFAULT_CHUNK, DEFAULT_IDEMPOTENCY_TTL_MS, split_bus_options
from .writer_aio import AsyncWriter

if TYPE_CHECKING:
    import asyncio

    # Only for annotations: ``import chi_redis`` stays free of redis.asyncio (and asyncio's
    # networking) until a program opens an asyncio client.
    import redis.asyncio

__all__ = ["AsyncEventBus"]


def _plain(client: Any) -> bool:
    """Whether ``client`` is a plain ``redis.asyncio.Redis`` (not a cluster client, not a
    subclass such as fakeredis's)."""
    import redis.asyncio

    return type(client) is redis.asyncio.Redis

logger = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncEventBus:
    """Publishes events from asyncio code; the twin of :class:`~chi_redis.EventBus`.

    Safe to share between the tasks of one event loop (the client pools connections);
    not between event loops.  ``close()`` closes the client's connections.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
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
        self.codec = Codec(encoding, max_event_bytes)
        self.idempotency_ttl_ms = idempotency_ttl_ms
        self.retry = retry or RetryPolicy()
        #: ``acks="replicas"``: as EventBus.acks (docs/design.md §3.4).
        self.acks = acks_of(acks, min_replicas, ack_timeout_ms)
        self._replica_acks = self.acks or Acks(min_replicas, ack_timeout_ms)
        #: Partitioned topics (docs/design.md §15), read with the topics' registration and
        #: cached; declaring one is the synchronous bus's (``EventBus.declare_topic``).
        self.partitions = PartitionRegistry(self.keys, lambda: self.client, _no_sync_io)
        self._bind(client)
        #: Whether the server is yet to be asked about cluster mode (a plain client: a
        #: ``redis.asyncio`` client is made without I/O, so the first publish asks).
        self.cluster_unknown = _plain(client)
        self._adopting: asyncio.Lock | None = None

    def _bind(self, client: Any) -> None:
        self.client = client
        self._url, self._password = client_url(client)
        #: The write path every publish goes through (the async twin of EventBus.writer).
        self.writer = AsyncWriter(
            client, self.keys, self.codec, idempotency_ttl_ms=self.idempotency_ttl_ms,
            call=self.call,
        )
        self.writer.partitions = self.partitions

    async def adopt_cluster(self) -> bool:
        """Ask the server whether it runs in cluster mode (once) and, if so, switch to a
        ``redis.asyncio.cluster.RedisCluster`` with the same settings, which finds the other
        nodes and follows MOVED/ASK; whether it switched.  The first publish calls it."""
        if not self.cluster_unknown:
            return False
        if self._adopting is None:
            import asyncio

            self._adopting = asyncio.Lock()
        async with self._adopting:  # tasks publishing at once ask once
            if not self.cluster_unknown:
                return False
            from ..backend.connection import ais_cluster_server

            cluster = await ais_cluster_server(self.client)
            if cluster is None:  # not reachable now: the publish reports it; ask again
                return False
            if cluster:
                from ..backend.cluster import async_cluster_client_of

                plain, client = self.client, async_cluster_client_of(self.client)
                await self.call(client.initialize)  # finds the nodes and the slot map
                self._bind(client)
                await plain.aclose()
            self.cluster_unknown = False
            return cluster

    @classmethod
    def from_url(
        cls, url: str = DEFAULT_URL, *, namespace: str = "chi", **options: Any
    ) -> AsyncEventBus:
        """A bus on a new ``redis.asyncio`` client for ``url``; options as for EventBus."""
        bus_opts = split_bus_options(options)
        return cls(connect_async(url, **options), namespace=namespace, **bus_opts)

    def __repr__(self) -> str:
        return f"AsyncEventBus({self._url!r}, namespace={self.keys.ns!r})"

    @property
    def url(self) -> str:
        """The server's URL without credentials (for messages and logs)."""
        return self._url

    @property
    def namespace(self) -> str:
        """The key namespace."""
        return self.keys.ns

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` under the bus's retry policy, mapping redis-py errors to ChiErrors."""
        return await acall_with_retry(fn, self.retry, self._url, self._password)

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.aclose()

    # publishing ---------------------------------------------------------------------
    async def publish(
        self, event: Event, *, idempotency_key: str | None = None, acks: AckMode | None = None
    ) -> str:
        """Append ``event`` to its topic stream and index it; returns the stream id.

        Exactly as :meth:`EventBus.publish <chi_redis.EventBus.publish>`: one round trip,
        idempotent on the event id and on ``idempotency_key`` (within its TTL), ``acks``
        as there.
        """
        if self.cluster_unknown:  # bad input is refused before anything is sent
            self.writer.pack_one(event, idempotency_key)
            await self.adopt_cluster()
        idem = (idempotency_key,) if idempotency_key is not None else None
        return (await self.writer.write((event,), idem, acks=self._acks(acks)))[0]

    def _acks(self, acks: AckMode | None) -> Acks | None:
        return call_acks(acks, self.acks, self._replica_acks)

    async def publish_batch(
        self, events: Sequence[Event], *, chunk_size: int = DEFAULT_CHUNK,
        acks: AckMode | None = None,
    ) -> list[str]:
        """Publish ``events`` in order, pipelined; one script call per ``chunk_size`` events.

        Every event is validated and encoded before anything is sent.  When a round trip
        fails (after the retry policy), raises :class:`~chi_redis.PublishError` whose
        ``written`` maps event indexes to stream ids and whose ``failed`` lists the rest;
        ``acks`` as for :meth:`EventBus.publish_batch <chi_redis.EventBus.publish_batch>`.
        """
        if self.cluster_unknown:  # bad input is refused before anything is sent
            self.writer.rounds(list(events), chunk_size, False)
            await self.adopt_cluster()
        return await self.writer.write_batch(events, chunk_size, acks=self._acks(acks))


def _no_sync_io(fn: Callable[[], Any]) -> Any:
    """The partition registry's synchronous calls (declaring, a lookup outside the
    publish round trip): not on an asyncio bus."""
    from ..errors import ConfigError

    raise ConfigError("declare partitioned topics with the synchronous EventBus"
                      " (declare_topic) or the configuration file's events.topics, not on"
                      " AsyncEventBus", field="partitions")
