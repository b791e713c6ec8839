"""``acks="replicas"`` on ``redis.asyncio`` (:class:`~chi_redis.AsyncEventBus`): the same
round as :mod:`.acks` (the publish scripts, the touch and ``WAIT`` on one connection of the
master that wrote), with asyncio's connections.  Why it works so: :mod:`.acks`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from ..backend.cluster import is_cluster
from ..errors import ChiError
from ..events.event import Event
from .acks import (
    _REROUTES,
    AckedBase,
    Acks,
    missing,
    not_replicated,
    outcome,
    reroute_pause,
    wait_refused,
)

if TYPE_CHECKING:
    from .writer_aio import AsyncWriter

__all__ = ["AsyncAckedSend", "awrite_acked", "awrite_batch_acked"]


class AsyncAckedSend(AckedBase):
    """:class:`~chi_redis.publish.acks.AckedBase` on a ``redis.asyncio`` client (a plain one
    or a ``redis.asyncio.cluster.RedisCluster``)."""

    async def __call__(self) -> list[Any]:
        if is_cluster(self.client):
            await self._on_cluster()
        else:
            pool = self.client.connection_pool
            conn = await pool.get_connection()
            try:
                await self._on_conn(conn, list(range(len(self.calls))), pool.connection_kwargs)
            finally:
                await pool.release(conn)
        return self.results

    async def _on_cluster(self) -> None:
        todo = list(range(len(self.calls)))
        for attempt in range(_REROUTES + 1):
            refused: list[int] = []
            try:
                for node, idx in self.by_node(todo):
                    conn = node.acquire_connection()
                    try:
                        refused += await self._on_conn(conn, idx, node.connection_kwargs)
                    finally:
                        node.release(conn)
            except (rex.ConnectionError, rex.TimeoutError):
                await self._reload_topology()  # a master gone: the retry policy tries again
                raise
            if not refused:
                return
            pause = reroute_pause(attempt, refused, self.results)
            await self._reload_topology()
            await asyncio.sleep(pause)
            todo = refused

    async def _reload_topology(self) -> None:
        with contextlib.suppress(rex.RedisError, OSError):
            await self.client.nodes_manager.initialize()

    async def _on_conn(self, conn: Any, idx: list[int], kw: Any) -> list[int]:
        """Send the calls ``idx``, the touch and a WAIT on ``conn``."""
        packed, touch = self.packed(idx)
        try:
            results, replicas = await self._exchange(conn, packed, touch)
            lost = missing(results)
            if lost:  # not run: load the script on this node and send those again
                await conn.send_packed_command([self.load])
                await conn.read_response()
                again, replicas = await self._exchange(conn, [packed[n] for n in lost], touch)
                for n, r in zip(lost, again, strict=True):
                    results[n] = r
        except BaseException:
            await conn.disconnect()
            raise
        return self.settle(idx, results, replicas, kw)

    async def _exchange(
        self, conn: Any, packed: list[bytes], touch: bytes
    ) -> tuple[list[Any], int]:
        await conn.send_packed_command([*packed, touch, self.wait])
        results: list[Any] = []
        for _ in packed:
            try:
                results.append(await conn.read_response())
            except rex.ResponseError as exc:
                results.append(exc)
        with contextlib.suppress(rex.ResponseError):  # read in any case: the WAIT follows
            await conn.read_response()
        try:
            return results, int(await conn.read_response(timeout=self.read_timeout(conn)))
        except rex.ResponseError as exc:
            return results, wait_refused(results, exc)


async def awrite_acked(
    writer: AsyncWriter, events: Sequence[Event],
    idempotency_keys: Sequence[str | None] | None, acks: Acks,
) -> list[str]:
    """:func:`~chi_redis.publish.acks.write_acked` on the asyncio writer."""
    from .writer import count_published

    calls = writer.pack_runs(events, idempotency_keys, False)
    await writer.register(e.topic for e in events)
    send = AsyncAckedSend(writer.client, writer.script, calls, acks)
    await writer.call(send)
    ids, unconfirmed, master = outcome(send, 0)
    count_published(e.topic for e in events)
    if unconfirmed:
        raise not_replicated(ids, unconfirmed, acks, [], master)
    return ids


async def awrite_batch_acked(
    writer: AsyncWriter, events: list[Event], chunk_size: int, acks: Acks
) -> list[str]:
    """:func:`~chi_redis.publish.acks.write_batch_acked` on the asyncio writer."""
    from .writer import count_published

    out: list[str] = []
    rounds = writer.rounds(events, chunk_size, False)
    try:
        await writer.register(e.topic for e in events)
    except ChiError as exc:
        raise await writer.failure(events, out, exc) from exc
    for group in rounds:
        send = AsyncAckedSend(writer.client, writer.script, group, acks)
        try:
            await writer.call(send)
        except ChiError as exc:
            raise await writer.failure(events, out, exc) from exc
        ids, unconfirmed, master = outcome(send, len(out))
        count_published(e.topic for e in events[len(out):len(out) + len(ids)])
        out += ids
        if unconfirmed:
            raise not_replicated(out, unconfirmed, acks, list(range(len(out), len(events))),
                                 master)
    return out
