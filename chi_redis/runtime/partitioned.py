"""``PartitionedConsumer``: a subscription's consumer when it binds partitioned topics
(docs/design.md §15).

It reads everything a :class:`~.consumer.StreamsConsumer` reads (the private stream and the
plain topic streams, as before) and, beside that, the partitions it owns
(:mod:`.partowners`), up to :data:`PART_BATCH` entries of a partition at a time, handed
to the worker threads one at a time: a partition's next entry goes out only once the one
before it was acked or dead-lettered, and the partition is read again only once all it
gave were, so one key's events reach the handlers in publish order however many threads
and processes run.  A failing entry's retry holds its
partition, as in Kafka: its backoff runs here, the entry stays pending (its lease renewed)
and the same entry is handed out again when the backoff is over; the partition's later
entries wait for it.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import dramatiq
import redis.exceptions as rex

from ..backend.cluster import is_cluster
from .consumer import StreamsConsumer
from .messages import StreamMessage, as_stream_message
from .partowners import Ownership, is_part_stream
from .slotreads import queue_reads

if TYPE_CHECKING:
    from .broker import StreamsBroker

__all__ = ["PartitionedConsumer"]

#: On a cluster, while a read of partitions found nothing, how long the read of the other
#: streams may block: a partition's next entry waits at most about this long.
PART_IDLE_BLOCK_MS = 100
#: While a partition held here runs an entry, how long to wait for an ack at most before
#: reading again (the partitions idle meanwhile are read without blocking).
BUSY_WAIT_MS = 50
#: Entries read at once from one partition (at most; the prefetch window bounds them): the
#: first is handed out, the others wait here, each handed out the moment the one before
#: it was acked, without a round trip to Redis.
PART_BATCH = 32


class PartitionedConsumer(StreamsConsumer):
    READ_AHEAD = False  #: one entry per partition in flight: nothing to read ahead

    def __init__(self, broker: StreamsBroker, queue: str, prefetch: int, timeout: int) -> None:
        self.owners = Ownership(broker, queue, broker.consumer_id, broker.options.lease_ms)
        self._busy_at_read: set[str] = set()
        #: Per partition: the entries read and not yet handed out, and the one handed out.
        self._queued: dict[str, deque[StreamMessage]] = {}
        self._running: dict[str, bytes] = {}
        self._plan: list[list[str]] = []  # partition reads of the last pipeline, in order
        self._parts_found = True
        super().__init__(broker, queue, prefetch, timeout)
        self._next_round = 0.0
        self._rounds = 0

    # Dramatiq interface ------------------------------------------------------------------
    def ack(self, message: dramatiq.MessageProxy) -> None:
        m = as_stream_message(message)
        hold_ms = m.hold_ms
        if hold_ms is None:
            super().ack(message)
            return
        # A retry of a partition's entry: hand the same entry out again after the backoff
        # (still in flight: its partition stays busy and its lease is renewed meanwhile).
        again = StreamMessage(m._message, m.entry_queue, m.entry_stream, m.entry_id,
                              m.deliveries)
        again.entry_fields = m.entry_fields
        with self.state.cond:
            self.state.held.append((time.monotonic() + hold_ms / 1000, again))
            self.state.cond.notify_all()

    def close(self) -> None:
        with self.state.cond:
            held, self.state.held = [m for _, m in self.state.held], []
        held += [m for q in self._queued.values() for m in q]
        self._queued.clear()
        with contextlib.suppress(Exception):  # Redis unreachable: its lease expires
            if held:
                self.requeue(held)
        super().close()
        with contextlib.suppress(rex.RedisError):  # else the leases run out
            self.owners.leave(self._busy())

    # the loop ----------------------------------------------------------------------------
    def _next(self) -> StreamMessage | None:
        if self.state.held and not self.stopping:
            now = time.monotonic()
            with self.state.cond:
                due = [m for t, m in self.state.held if t <= now]
                self.state.held = [(t, m) for t, m in self.state.held if t > now]
            self._local.extend(due)
        self._hand_queued()
        if not self._local and not self.stopping and self.owners.held:
            # A partition held here runs an entry: what frees it is an ack (a worker
            # thread's, which notifies), not Redis.  Wait for one rather than block in a
            # read, unless one was freed since the last read (then read it at once).
            with self.state.cond:
                busy = self._busy_now()
                if busy and not self._busy_at_read - busy and not self._queued_ready():
                    self.state.cond.wait(timeout=self._wait_s(BUSY_WAIT_MS))
            self._hand_queued()
        return super()._next()

    def _queued_ready(self) -> bool:
        """Whether a partition's next entry may go out (caller holds ``state.cond``)."""
        inflight = self.state.inflight
        return any(q and (s, self._running.get(s, b"")) not in inflight
                   for s, q in self._queued.items())

    def _hand_queued(self) -> None:
        """Hand out the next waiting entry of each partition whose entry before it ended
        (none once the worker shuts down: what waits is handed back by :meth:`close`)."""
        if not self._queued or self.stopping:
            return
        with self.state.cond:
            inflight = self.state.inflight
            for stream, q in list(self._queued.items()):
                if (stream, self._running.get(stream, b"")) in inflight:
                    continue
                m = q.popleft()
                self._running[stream] = m.entry_id
                self._local.append(m)
                if not q:
                    del self._queued[stream]

    def _pop(self) -> StreamMessage | None:
        """As the base's, but an entry delivered again waits only for the entries handed
        out, not for those waiting here behind their partition's running one."""
        m = self._local[0]
        waiting = sum(len(q) for q in self._queued.values())
        if (m.deliveries > 1 or self._alone) and (
                len(self.state.inflight) - waiting > len(self._local)):
            return self._wait()
        self._alone = m.deliveries > 1
        return self._local.popleft()

    def _handle(
        self, stream: str, entries: Any, deliveries: dict[bytes, int] | None = None
    ) -> None:
        """As the base's; a partition's messages wait in its queue, handed out one at a
        time (:meth:`_hand_queued`)."""
        if not is_part_stream(stream):
            super()._handle(stream, entries, deliveries)
            return
        before = len(self._local)
        super()._handle(stream, entries, deliveries)
        taken = [self._local.pop() for _ in range(len(self._local) - before)][::-1]
        if taken:
            self._queued.setdefault(stream, deque()).extend(taken)
            self._hand_queued()

    def _busy_now(self) -> set[str]:
        """The partition streams with an entry in flight (caller holds ``state.cond``)."""
        return {s for s, _ in self.state.inflight if is_part_stream(s)}

    def _busy(self) -> set[str]:
        with self.state.cond:
            return {s for s, _ in self.state.inflight if is_part_stream(s)}

    def _read_pipe(self, free: int, now: float) -> tuple[Any, dict[str, list[bytes]]]:
        """The base read (acks, promotion, the other streams) with, before its read, the
        read of the partitions readable now (those with nothing in flight here), up to
        :data:`PART_BATCH` each within the window: own pending entries first (``0``), then
        new ones (``>``).  On a single node the new ones are one command that
        blocks (the other streams' read then does not); on a cluster each partition is
        its own slot, so each is read without blocking, and the other streams' read
        blocks only when the partitions had nothing last time (at most
        :data:`PART_IDLE_BLOCK_MS`)."""
        busy = self._busy()
        reads = self.owners.reads(busy)
        running = bool(busy & self.owners.held.keys())  # no read blocks then (_next)
        history = [s for s, start in reads.items() if start == "0"]
        new = [s for s, start in reads.items() if start == ">"]
        cluster = is_cluster(self.client)
        acks = self.acks.take()
        pipe = self.client.pipeline(transaction=False)
        self.acks.queue(pipe, acks)
        pipe.evalsha(self._promote.sha, 2, self.delayed, self.private, 100)
        plan = [[s] for s in history] if cluster else ([history] if history else [])
        count = max(1, min(PART_BATCH, free // max(1, len(reads))))
        for streams in plan:
            pipe.xreadgroup(self.queue, self.name, dict.fromkeys(streams, "0"), count=count)
        block = self._block_ms(now)
        if new and not cluster:
            pipe.xreadgroup(self.queue, self.name, dict.fromkeys(new, ">"), count=count,
                            block=None if history or running else block)
            plan.append(new)
            block = None
        elif new:
            for s in new:
                pipe.xreadgroup(self.queue, self.name, {s: ">"}, count=count)
                plan.append([s])
            if self._parts_found or running:
                block = None
            elif block is not None:
                block = min(block, PART_IDLE_BLOCK_MS)
        elif running:
            block = None  # waited for an ack already (_next)
        self._plan = plan
        return queue_reads(pipe, self.queue, self.name, self._streams, free, block), acks

    def _absorb(self, results: list[Any]) -> None:
        n = len(self._plan)
        part_results = results[-1 - n:-1] if n else []
        if n:
            results = [*results[: -1 - n], results[-1]]
        super()._absorb(results)
        found = 0
        for streams, read in zip(self._plan, part_results, strict=True):
            if isinstance(read, Exception):
                self._read_error(read)
                continue
            got = {(k.decode() if isinstance(k, bytes) else k): v for k, v in (read or [])}
            for stream in streams:
                entries = got.get(stream, [])
                if stream in self.owners.history:
                    self._read_back(stream, entries)
                elif entries:
                    self._handle(stream, entries)
                found += len(entries)
        self._parts_found = found > 0
        self._busy_at_read = self._busy()
        self._hand_off = self._hand_off or bool(self._local)

    def _read_back(self, stream: str, entries: list[Any]) -> None:
        """Own pending entries read back: handed out as delivered again (counted by the
        crash guard, run alone); one whose entry was trimmed meanwhile is acked."""
        self.owners.read_back(stream, len(entries))
        gone = [sid for sid, fields in entries if fields is None]
        if gone:
            self.client.xack(stream, self.queue, *gone)
            self.owners.history.add(stream)  # read on: there may be more behind it
        live = [(sid, f) for sid, f in entries if f is not None]
        if live:
            self._handle(stream, live, {sid: 2 for sid, _ in live})

    # maintenance -------------------------------------------------------------------------
    def _refresh_streams(self) -> None:
        super()._refresh_streams()
        topics = [self.broker.keys.topic_from_stream(s) for s in self._streams
                  if s != self.private]
        self.owners.bind(topics)
        for s in self.owners.streams():
            self._topic_of[s] = self.owners.topic_of(s)

    def _maintain(self, now: float) -> None:
        super()._maintain(now)
        if now >= self._next_round and not self.stopping and self.owners.topics:
            busy = self._busy()
            self.owners.round(busy)
            for stream, claimed, counts in self.owners.recover(busy):
                claimed, doomed = self.crashes.sort(stream, claimed, counts)
                for sid, fields, count in doomed:  # started max_deliveries times
                    self._reject(stream, sid, fields, "max_deliveries", count)
            self._rounds += 1
            if self._rounds % 12 == 0:  # consumers of dead workers, with nothing pending
                self.leases.reap(list(self.owners.held))
            self._next_round = now + self.lease_ms_s / 3

    @property
    def lease_ms_s(self) -> float:
        return self.opts.lease_ms / 1000

    def _wait_s(self, most_ms: int) -> float:
        wait = super()._wait_s(most_ms)
        return max(0.0, min(wait, self._next_round - time.monotonic()))
