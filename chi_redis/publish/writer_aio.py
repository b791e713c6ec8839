"""The asyncio write path: :class:`AsyncWriter`, the twin of ``writer.Writer`` on a
``redis.asyncio`` client (``AsyncEventBus``, ``BufferedPublisher``).  The packing, the
routing of partitioned topics and the partial-failure report are ``writer``'s; only the
I/O differs."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from ..backend.cluster import is_cluster
from ..backend.keys import Keys
from ..errors import ChiError, PublishError
from ..events.codec import Codec
from ..events.event import Event
from ..observe import metrics, tracing
from .acks import Acks
from .packing import Call
from .single import count_one
from .slots import id_lookups
from .writer import DEFAULT_CHUNK, _Packing, _stream_ids, _topics, count_published, partial_failure

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["AsyncWriter"]


class AsyncWriter(_Packing):
    """:class:`Writer`'s publishing on a ``redis.asyncio`` client; ``call`` awaits one
    round trip under the retry policy (``AsyncEventBus.call``)."""

    def __init__(
        self, client: redis.asyncio.Redis, keys: Keys, codec: Codec, *, idempotency_ttl_ms: int,
        call: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
    ) -> None:
        super().__init__(keys, codec, idempotency_ttl_ms)
        self.client = client
        self.call = call
        self.per_topic = is_cluster(client)

    async def register(self, topics: Iterable[str]) -> list[str]:
        """As :meth:`Writer.register`: the topics set, and the fresh topics' partitioning
        read in the same round trip; the fresh ones that are partitioned."""
        fresh = self.registered.fresh(topics)
        if not fresh:
            return []
        registry = self.partitions
        if registry is None:
            await self.call(lambda: self.client.sadd(self.keys.topics(), *fresh))
            partitioned: list[str] = []
        else:
            async def both() -> list[Any]:
                pipe = self.client.pipeline(transaction=False)
                pipe.sadd(self.keys.topics(), *fresh)
                pipe.hmget(self.keys.partitions(), fresh)
                return await pipe.execute()

            raws = (await self.call(both))[1]
            partitioned = registry.learn(dict(zip(fresh, raws, strict=True)))
        self.registered.add(fresh)
        return partitioned

    async def write(
        self, events: Sequence[Event], idempotency_keys: Sequence[str | None] | None = None,
        *, archive: bool = False, acks: Acks | None = None,
    ) -> list[str]:
        """As :meth:`Writer.write`."""
        if tracing.enabled() and not archive:
            with tracing.publishing(events) as traced:
                return await self._write(traced, idempotency_keys, archive, acks)
        return await self._write(events, idempotency_keys, archive, acks)

    async def _write(
        self, events: Sequence[Event], idempotency_keys: Sequence[str | None] | None,
        archive: bool, acks: Acks | None = None,
    ) -> list[str]:
        if acks is not None:
            from .acks_aio import awrite_acked

            return await awrite_acked(self, events, idempotency_keys, acks)
        if len(events) == 1 and not archive:
            event = events[0]
            idem = idempotency_keys[0] if idempotency_keys else None
            name = self.route(events)
            one = self.pack_one(event, idem, name[0] if name else None)
            if not self.registered.knows(event.topic) and await self.register((event.topic,)):
                name = self.route(events)  # partitioned: packed again, for its partition
                one = self.pack_one(event, idem, name[0] if name else None)
            sid: bytes = await self.call(lambda: self.send_one(*one))
            count_one(event.topic)
            return [sid.decode()]
        calls = self.pack_runs(events, idempotency_keys, archive)
        if await self.register(_topics(events)):  # partitioned topics seen first: route them
            calls = self.pack_runs(events, idempotency_keys, archive)
        ids: list[str] = []
        for keys, argv in calls:
            ids += _stream_ids(await self.call(partial(self.send, keys, argv)))
        if metrics.enabled() and not archive:
            count_published(_topics(events))
        return ids

    async def write_batch(
        self, events: Sequence[Event], chunk_size: int = DEFAULT_CHUNK, *, archive: bool = False,
        acks: Acks | None = None,
    ) -> list[str]:
        """As :meth:`Writer.write_batch`."""
        if tracing.enabled() and not archive:
            with tracing.publishing(list(events)) as traced:
                return await self._write_batch(traced, chunk_size, archive, acks)
        return await self._write_batch(list(events), chunk_size, archive, acks)

    async def _write_batch(
        self, events: list[Event], chunk_size: int, archive: bool, acks: Acks | None = None
    ) -> list[str]:
        if acks is not None:
            from .acks_aio import awrite_batch_acked

            return await awrite_batch_acked(self, events, chunk_size, acks)
        out: list[str] = []
        rounds = self.rounds(events, chunk_size, archive)
        try:
            if await self.register(_topics(events)):  # partitioned topics seen first
                rounds = self.rounds(events, chunk_size, archive)
        except ChiError as exc:
            raise await self.failure(events, out, exc) from exc
        for group in rounds:
            try:
                results = await self.call(partial(self.send_pipelined, group))
            except ChiError as exc:
                raise await self.failure(events, out, exc) from exc
            start = len(out)
            for r in results:
                out += _stream_ids(r)
            if not archive:
                count_published(_topics(events, start, len(out)))
        return out

    async def send(self, keys: list[str], argv: list[Any]) -> list[bytes]:
        """One publish-script call (one round trip), unretried and unmapped."""
        return await self.script.arun(self.client, keys, argv)  # type: ignore[no-any-return]

    async def send_one(self, keys: list[bytes], argv: list[bytes]) -> bytes:
        """As :meth:`Writer.send_one`."""
        return await self.one_script.arun(self.client, keys, argv)  # type: ignore[no-any-return]

    async def send_pipelined(self, calls: list[Call]) -> list[list[bytes]]:
        """Several publish-script calls in one round trip, unretried and unmapped."""
        return await self.script.arun_pipelined(self.client, calls)

    async def failure(self, events: list[Event], out: list[str], exc: ChiError) -> PublishError:
        rest = self.unwritten(events, out)
        found: list[bytes | str | None] | None = None
        with contextlib.suppress(rex.RedisError, OSError):
            pipe = self.client.pipeline(transaction=False)
            found = (await id_lookups(pipe, self.keys, rest, self.route(rest)).execute()
                     if rest else [])
        return partial_failure(events, out, found, exc)
