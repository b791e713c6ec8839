"""The event bus: publishing into one Redis stream per topic, and the event store."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions as rex

from ..backend.connection import DEFAULT_URL, RetryPolicy, call_with_retry, client_url, connect
from ..backend.keys import Keys
from ..backend.scripts import script
from ..errors import ChiError, PublishError
from ..events.codec import DEFAULT_MAX_EVENT_BYTES, Codec, Encoding
from ..events.event import Event
from ..runtime.subscriptions import Subscription, SubscriptionOptions
from ..store.redis import RedisEventStore
from .writer import (
    DEFAULT_CHUNK,
    DEFAULT_IDEMPOTENCY_TTL_MS,
    pack,
    partial_failure,
    split_bus_options,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..events.filters import Filter
    from ..runtime.broker import StreamsBroker
    from ..runtime.deadletters import DeadLetter
    from ..runtime.subscriptions import Handler, Start

__all__ = ["EventBus"]

logger = logging.getLogger(__name__)


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
    ) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.codec = Codec(encoding, max_event_bytes)
        self.idempotency_ttl_ms = idempotency_ttl_ms
        self.retry = retry or RetryPolicy()
        self._url, self._password = client_url(client)
        self._publish = script("publish")
        self.store = RedisEventStore(self)
        self.subscriptions: dict[str, Subscription] = {}
        self.broker: StreamsBroker | None = None

    @classmethod
    def from_url(
        cls, url: str = DEFAULT_URL, *, namespace: str = "chi", **options: Any
    ) -> EventBus:
        """A bus on a new client for ``url``; ``options`` go to :class:`EventBus`."""
        bus_opts = split_bus_options(options)
        return cls(connect(url, **options), namespace=namespace, **bus_opts)

    def __repr__(self) -> str:
        return f"EventBus({self._url!r}, namespace={self.keys.ns!r})"

    @property
    def namespace(self) -> str:
        """The key namespace."""
        return self.keys.ns

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` under the bus's retry policy, mapping redis-py errors to ChiErrors."""
        return call_with_retry(fn, self.retry, self._url, self._password)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    # publishing ---------------------------------------------------------------------
    def _evalsha(self, keys: list[str], argv: list[Any]) -> list[bytes]:
        return self._publish.run(self.client, keys, argv)  # type: ignore[no-any-return]

    def publish(self, event: Event, *, idempotency_key: str | None = None) -> str:
        """Append ``event`` to its topic stream and index it; returns the stream id.

        One round trip.  With ``idempotency_key``, a second publish within the TTL writes
        nothing and returns the first stream id.  Publishing the same event id twice (a
        retry) also writes it once.
        """
        idem = (idempotency_key,) if idempotency_key is not None else None
        keys, argv = pack(self.keys, self.codec, (event,), idem, self.idempotency_ttl_ms)
        return self.call(lambda: self._evalsha(keys, argv))[0].decode()  # type: ignore[no-any-return]

    def publish_batch(
        self, events: Sequence[Event], *, chunk_size: int = DEFAULT_CHUNK
    ) -> list[str]:
        """Publish ``events`` in order, pipelined; one round trip per ``chunk_size`` events.

        Every event is validated and encoded before anything is sent.  When a chunk fails,
        raises :class:`PublishError` whose ``written`` maps event indexes to stream ids and
        whose ``failed`` lists the indexes not written.
        """
        return self._write_batch(events, chunk_size, archive=False)

    def _write_batch(self, events: Sequence[Event], chunk_size: int, archive: bool) -> list[str]:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        events = list(events)
        ttl = self.idempotency_ttl_ms
        calls = [
            pack(self.keys, self.codec, events[i : i + chunk_size], None, ttl, archive)
            for i in range(0, len(events), chunk_size)
        ]
        out: list[str] = []
        per_rt = 20  # chunks per pipeline round trip
        for start in range(0, len(calls), per_rt):
            group = calls[start : start + per_rt]
            try:
                results = self.call(lambda group=group: self._pipeline(group))
            except ChiError as exc:
                raise self._partial_failure(events, out, exc) from exc
            for r in results:
                out.extend(sid.decode() for sid in r)
        return out

    def _pipeline(self, calls: list[tuple[list[str], list[Any]]]) -> list[list[bytes]]:
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for keys, argv in calls:
                pipe.evalsha(self._publish.sha, len(keys), *keys, *argv)
            try:
                return pipe.execute()
            except rex.NoScriptError:
                if attempt:
                    raise
                self.client.script_load(self._publish.source)
        raise AssertionError("unreachable")  # pragma: no cover

    def _partial_failure(self, events: list[Event], out: list[str], exc: ChiError) -> PublishError:
        rest = [events[i].id for i in range(len(out), len(events))]
        found: list[bytes | str | None] | None = None
        # Some events of the failed chunks may have been written: ask the id lookup.
        with contextlib.suppress(rex.RedisError):
            found = self.client.hmget(self.keys.ids(), rest) if rest else []
        return partial_failure(events, out, found, exc)

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
    ) -> Callable[[Handler], Handler]:
        """Register ``fn(event)`` (or ``fn(event, delivery)``, sync or async) as a subscription.

        The name is the consumer group and the Dramatiq queue/actor: renaming is a
        migration.  ``priority``: higher runs first when workers are saturated.
        """
        options = SubscriptionOptions(
            max_retries=max_retries, min_backoff_ms=min_backoff_ms, max_backoff_ms=max_backoff_ms,
            max_deliveries=max_deliveries, time_limit_ms=time_limit_ms, dedupe=dedupe,
            dedupe_ttl_ms=dedupe_ttl_ms, throws=tuple(throws),
        )

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

    def _attach(self, broker: StreamsBroker) -> None:
        """Called by StreamsBroker: declare every subscription registered so far."""
        self.broker = broker
        for sub in self.subscriptions.values():
            broker.declare_subscription(sub)

    def dead_letters(
        self, sub: str, *, after: str | None = None, count: int = 100
    ) -> list[DeadLetter]:
        """Dead letters of subscription ``sub``, oldest first."""
        from ..runtime.deadletters import list_dead_letters

        return list_dead_letters(self, sub, after=after, count=count)

    def redrive(self, sub: str, ids: list[str] | None = None) -> int:
        """Put dead letters of ``sub`` (all, or ``ids``) back on its queue once; returns count."""
        from ..runtime.deadletters import redrive

        return redrive(self, sub, ids)
