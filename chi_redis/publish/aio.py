"""The asyncio event bus: :class:`EventBus`'s publishing on ``redis.asyncio``.

Same Redis layout, same publish script, same validation, retry policy and errors as the
synchronous bus; queries stay on the synchronous ``EventBus.store``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import redis.asyncio
import redis.exceptions as rex

from ..backend.connection import (
    DEFAULT_URL,
    RetryPolicy,
    acall_with_retry,
    client_url,
    connect_async,
)
from ..backend.keys import Keys
from ..backend.scripts import script
from ..errors import ChiError, PublishError
from ..events.codec import DEFAULT_MAX_EVENT_BYTES, Codec, Encoding
from ..events.event import Event
from .writer import (
    DEFAULT_CHUNK,
    DEFAULT_IDEMPOTENCY_TTL_MS,
    Call,
    pack,
    partial_failure,
    split_bus_options,
)

__all__ = ["AsyncEventBus"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Chunks (publish-script calls) sent per pipeline round trip.
_CHUNKS_PER_ROUND_TRIP = 20


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
    ) -> None:
        self.client = client
        self.keys = Keys(namespace)
        self.codec = Codec(encoding, max_event_bytes)
        self.idempotency_ttl_ms = idempotency_ttl_ms
        self.retry = retry or RetryPolicy()
        self._url, self._password = client_url(client)
        self._publish = script("publish")

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
    async def _evalsha(self, keys: list[str], argv: list[Any]) -> list[bytes]:
        try:
            result = await self.client.evalsha(self._publish.sha, len(keys), *keys, *argv)
        except rex.NoScriptError:  # first use, or after a restart or SCRIPT FLUSH
            result = await self.client.eval(self._publish.source, len(keys), *keys, *argv)
        return result  # type: ignore[no-any-return]

    async def publish(self, event: Event, *, idempotency_key: str | None = None) -> str:
        """Append ``event`` to its topic stream and index it; returns the stream id.

        Exactly as :meth:`EventBus.publish <chi_redis.EventBus.publish>`: one round trip,
        idempotent on the event id and on ``idempotency_key`` (within its TTL).
        """
        keys, argv = pack(
            self.keys,
            self.codec,
            (event,),
            (idempotency_key,) if idempotency_key is not None else None,
            self.idempotency_ttl_ms,
        )
        result = await self.call(lambda: self._evalsha(keys, argv))
        return result[0].decode()

    async def publish_batch(
        self, events: Sequence[Event], *, chunk_size: int = DEFAULT_CHUNK
    ) -> list[str]:
        """Publish ``events`` in order, pipelined; one script call per ``chunk_size`` events.

        Every event is validated and encoded before anything is sent.  When a round trip
        fails (after the retry policy), raises :class:`~chi_redis.PublishError` whose
        ``written`` maps event indexes to stream ids and whose ``failed`` lists the rest.
        """
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        events = list(events)
        ttl = self.idempotency_ttl_ms
        calls = [
            pack(self.keys, self.codec, events[i : i + chunk_size], None, ttl)
            for i in range(0, len(events), chunk_size)
        ]
        out: list[str] = []
        for start in range(0, len(calls), _CHUNKS_PER_ROUND_TRIP):
            group = calls[start : start + _CHUNKS_PER_ROUND_TRIP]
            try:
                results = await self.call(partial(self._pipeline, group))
            except ChiError as exc:
                raise await self._partial_failure(events, out, exc) from exc
            for r in results:
                out.extend(sid.decode() for sid in r)
        return out

    async def _pipeline(self, calls: list[Call]) -> list[list[bytes]]:
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for keys, argv in calls:
                pipe.evalsha(self._publish.sha, len(keys), *keys, *argv)
            try:
                return await pipe.execute()
            except rex.NoScriptError:
                if attempt:
                    raise
                await self.client.script_load(self._publish.source)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _partial_failure(
        self, events: list[Event], out: list[str], exc: ChiError
    ) -> PublishError:
        rest = [events[i].id for i in range(len(out), len(events))]
        found: list[bytes | str | None] | None = None
        # Some events of the failed chunks may have been written: ask the id lookup.
        with contextlib.suppress(rex.RedisError, OSError):
            found = await self.client.hmget(self.keys.ids(), rest) if rest else []
        return partial_failure(events, out, found, exc)
