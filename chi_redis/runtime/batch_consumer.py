"""``BatchConsumer``: the read loop of a batch subscription (docs/design.md §5.10).

The same loop as :class:`~.consumer.StreamsConsumer` (one pipelined round trip: buffered
acks, promotion of due retries, XREADGROUP; leases, reclaim, topic discovery), except for
what becomes a Dramatiq message.  Matching topic entries are *gathered*: as soon as
``batch_size`` of them are in hand they leave as one :class:`~.batches.BatchMessage`, and a
smaller batch leaves once its first entry has waited ``batch_wait_ms`` (the read blocks no
longer than that).  Entries that do not match are acked unseen, as for every subscription.
An entry delivered again after its consumer died (delivery count > 1) leaves alone, in a
batch of one, so an event that kills its worker cannot take innocent ones to the dead
letters with it (``max_deliveries`` counts per entry).  Private-stream messages (retry
copies, split parts, redrives) are batches already; the single-event messages of a targeted
replay are gathered into batches (marked ``replay``) like topic entries.

Gathered entries are pending on this consumer and in flight like any other: their leases
are refreshed, a graceful stop hands them back, a crash leaves them to the reclaim sweep.

A batch that succeeded is acked through the buffered acks (one XACK per stream per read).
Otherwise :class:`~.batch_settle.BatchSettler` writes what remains of it: after a failure
that Retries will retry, the copy holds only the failing members; once retries are
exhausted, failing members are split in halves (each tried once more), and a lone failing
member is dead-lettered on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.errors import ConnectionClosed

from ..backend.streamids import parse_id
from ..errors import DecodeError
from ..events.filters import EntryView
from ..observe.metrics import labelled
from .batch_settle import CONNECTION_ERRORS, BatchSettler, halves
from .batches import BatchMessage, Member, members_of
from .consumer import StreamsConsumer
from .messages import StreamMessage, as_stream_message, malformed_batch, private_message

if TYPE_CHECKING:
    from .broker import StreamsBroker

__all__ = ["BatchConsumer"]

_REQUIRED = (b"id", b"type", b"ts", b"data")
_REQUIRED_SET = frozenset(_REQUIRED)
_HANDLED = "chi_events_handled_total"
#: The most entries a batch subscription's consumer holds beyond two batches.
MAX_WINDOW = 4096

#: A gathered entry: (stream, entry id, member, deliveries).
Gathered = tuple[str, bytes, Member, int]
#: The options a single-event message of a targeted replay carries (and nothing else).
_REPLAY_OPTIONS = frozenset({"src", "src_id", "replay"})


class _Gathering:
    """Entries gathered into the next batch, and since when (one per kind of batch)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options  # the options of the batches it makes
        self.items: list[Gathered] = []
        self.since = 0.0

    def add(self, item: Gathered, now: float) -> None:
        if not self.items:
            self.since = now
        self.items.append(item)


class BatchConsumer(StreamsConsumer):
    """Consumes the queue of a batch subscription."""

    READ_AHEAD = False  # entries gather into batches here: one read at a time

    def __init__(self, broker: StreamsBroker, queue: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue, prefetch, timeout)
        sub = self.sub
        if sub is None or sub.options.batch_size is None:
            raise ValueError(f"{queue!r} is not a batch subscription")
        self.batch_size = sub.options.batch_size
        self.batch_wait_s = sub.options.batch_wait / 1000
        self.settler = BatchSettler(broker, queue)
        # Bound by explicit topics alone: every entry of a bound stream matches.
        self._every = bool(sub.topics) and not sub.types and sub.filter is None
        # Topic entries; and the single-event messages of a targeted replay, gathered too.
        self._gathering = (_Gathering({}), _Gathering({"replay": True}))

    # the loop ----------------------------------------------------------------------------
    def _next(self) -> StreamMessage | None:
        if not self._local and self._gathered():
            self._emit(time.monotonic())
        return super()._next()

    def _pop(self) -> StreamMessage | None:
        # An entry delivered again leaves alone, in a batch of one (above), but is not held
        # back until the others end: gathered entries are in flight and not yet handed out.
        return self._local.popleft()

    def _window(self) -> int:
        """Room for ``prefetch`` batches (the Worker's: two per thread), at least two, and
        at most ``MAX_WINDOW`` entries beyond that."""
        n = self.batch_size
        return max(2 * n, min(n * self.prefetch, MAX_WINDOW))

    def _block_ms(self, now: float) -> int | None:
        block = super()._block_ms(now)
        since = [g.since for g in self._gathering if g.items]
        if not since:
            return block
        left = int((min(since) + self.batch_wait_s - now) * 1000)
        if left < 1:
            return None
        return left if block is None else min(block, left)

    def _emit(self, now: float) -> None:
        """Turn gathered entries into batch messages: full batches at once, the rest once
        its first entry waited ``batch_wait_ms``."""
        n = self.batch_size
        for g in self._gathering:
            items = g.items
            while len(items) >= n:
                self._local.append(self._batch(items[:n], g.options))
                del items[:n]
            if items and now - g.since >= self.batch_wait_s:
                self._local.append(self._batch(items, g.options))
                g.items = []

    def _gathered(self) -> bool:
        return any(g.items for g in self._gathering)

    def _batch(self, items: list[Gathered], options: dict[str, Any] | None = None) -> BatchMessage:
        members = [it[2] for it in items]
        first = members[0][1][b"id"].decode(errors="replace")
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=self.queue, actor_name=self.queue, args=(members,), kwargs={},
            options=dict(options or {}),
            message_id=f"{self.queue}:{first}+{len(members) - 1}",
            message_timestamp=parse_id(items[0][1])[0],
        )
        return BatchMessage(message, self.queue, [(s, sid, c) for s, sid, _, c in items],
                            members, [it[3] for it in items])

    # entries -------------------------------------------------------------------------------
    def _handle(
        self, stream: str, entries: Any, deliveries: dict[bytes, int] | None = None
    ) -> None:
        private = stream == self.private
        topic = self._topic_of.get(stream, "")
        held: list[bytes] = []
        filtered = 0
        now = time.monotonic()
        for sid, fields in entries:
            if fields is None:
                continue
            count = deliveries.get(sid, 1) if deliveries else 1
            try:
                if private:
                    self._private(sid, fields, count, now)
                    held.append(sid)
                    continue
                member = self._member(stream, topic, sid, fields)
            except DecodeError as exc:
                self._reject(stream, sid, fields, exc.kind, count, exc)
                continue
            if member is None:
                filtered += 1
                continue
            held.append(sid)
            if count > 1:  # delivered again after a crash: alone (see the module docstring)
                self._local.append(self._batch([(stream, sid, member, count)]))
                continue
            self._gathering[0].add((stream, sid, member, count), now)
        if filtered:
            labelled(_HANDLED, self.queue, "filtered").inc(filtered)
        if held:
            with self.state.cond:
                for sid in held:
                    self.state.inflight[(stream, sid)] = None
        if self._gathered():
            self._emit(now)

    def _private(self, sid: bytes, fields: dict[bytes, bytes], count: int, now: float) -> None:
        """A private-stream entry: a message as it is, but the single events of a targeted
        replay are gathered into batches like topic entries."""
        msg = self._from_private(sid, fields, count)
        if (
            count == 1 and isinstance(msg, BatchMessage) and len(msg.members) == 1
            and msg.options.get("replay") is True and msg.options.keys() <= _REPLAY_OPTIONS
        ):
            self._gathering[1].add((self.private, sid, msg.members[0], count), now)
        else:
            self._local.append(msg)

    def _member(self, stream: str, topic: str, sid: bytes, f: dict[bytes, bytes]) -> Member | None:
        """The member of a topic entry; None if this subscription skips it (acked)."""
        if not f.keys() >= _REQUIRED_SET:
            missing = next(k for k in _REQUIRED if k not in f).decode()
            raise DecodeError(f"missing field {missing!r}", stream=stream,
                              entry_id=sid.decode(), kind="missing_field")
        sub = self.sub
        if b"arc" in f or sub is None or (not self._every and not sub.accepts(
            EntryView(f[b"type"].decode(errors="replace"), topic, f.get(b"meta", b"{}"))
        )):
            self.broker.buffer_ack(self.queue, stream, sid)
            return None
        return [topic, f, stream, sid.decode()]

    def _from_private(self, sid: bytes, f: dict[bytes, bytes], count: int) -> StreamMessage:
        """The message of a private-stream entry: a batch (or a plain task); DecodeError
        unless it is well formed."""
        message = private_message(f, sid, self.queue, self.private,
                                  lambda m: malformed_batch(m, self.queue))
        if message.actor_name != self.queue:
            return StreamMessage(message, self.queue, self.private, sid, count)
        members = members_of(message.args, message.options, self.private, sid.decode())
        return BatchMessage(message, self.queue, [(self.private, sid, count)], members,
                            [count] * len(members))

    # Dramatiq interface --------------------------------------------------------------------
    def ack(self, message: dramatiq.MessageProxy) -> None:
        if not isinstance(message, BatchMessage):
            super().ack(message)
            return
        m = message
        if m.keep_pending:  # its retry copy was not written: left to the lease
            self._release(m)
            return
        failed = m._exception is not None  # Dramatiq offers no public getter
        retried = 0
        if failed:
            retried = len(m.members) - len(m.dead) if m.failing is None else len(m.failing)
        if m.dead:
            self._settle(m, poison=[], parts=[], exc=None)
        elif max(m.counts) > 1:  # delivered again after a crash: acked now, not buffered
            self._ack_now(m)
        else:
            self._buffer_acks(m)
        ok = len(m.members) - retried - len(m.dead)
        if ok:
            labelled(_HANDLED, self.queue, "ok").inc(ok)
        if retried:
            labelled(_HANDLED, self.queue, "retried").inc(retried)

    def nack(self, message: dramatiq.MessageProxy) -> None:
        if not isinstance(message, BatchMessage):
            super().nack(message)
            return
        m = message
        if m.keep_pending:
            self._release(m)
            return
        exc = m._exception  # Dramatiq keeps the failure here and offers no public getter
        dead = {i for i, _ in m.dead}
        if m.failing is None:  # the handler did not run (a middleware refused the message)
            poison, parts = [i for i in range(len(m.members)) if i not in dead], []
        elif len(m.failing) > 1:  # retries exhausted: split to isolate the poison
            poison, parts = [], halves(m.failing)
        else:
            poison, parts = m.failing, []
        self._settle(m, poison=poison, parts=parts, exc=exc)
        ok = len(m.members) - len(dead) - len(poison) - sum(len(p) for p in parts)
        if ok:
            labelled(_HANDLED, self.queue, "ok").inc(ok)

    def _settle(
        self, m: BatchMessage, *, poison: list[int], parts: list[list[int]],
        exc: BaseException | None,
    ) -> None:
        try:
            self.settler.settle(m, poison=poison, parts=parts, exc=exc)
        except CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]

    def _buffer_acks(self, m: BatchMessage) -> None:
        """Buffer the acks of every entry of ``m`` (what ``StreamsBroker.buffer_ack`` does
        for one entry), under one lock: the next read sends them, one XACK per stream."""
        state = self.state
        inflight, acks = state.inflight, state.acks
        with state.cond:
            for stream, sid, _ in m.entries:
                inflight.pop((stream, sid), None)
                acks[stream].append(sid)
            state.cond.notify()

    def _ack_now(self, m: BatchMessage) -> None:
        """XACK (and XDEL, on the private stream) the entries of ``m`` in one round trip, so
        that a worker killed by the next message cannot take them back to the lease: an
        entry delivered again after a crash may be running beside the event that crashed it.
        """
        by_stream: dict[str, list[bytes]] = {}
        for stream, sid, _ in m.entries:
            by_stream.setdefault(stream, []).append(sid)
        pipe = self.client.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, self.queue, *ids)
            if stream == self.private:
                pipe.xdel(stream, *ids)
        try:
            pipe.execute()
        except CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]
        self._release(m)

    def _release(self, m: BatchMessage) -> None:
        for stream, sid, _ in m.entries:
            self.broker.release(self.queue, stream, sid)

    def requeue(self, messages: Iterable[dramatiq.MessageProxy]) -> None:
        """Hand messages back (every entry of a batch), as :meth:`StreamsConsumer.requeue`."""
        held: list[tuple[str, bytes, int]] = []
        for message in messages:
            if isinstance(message, BatchMessage):
                held += message.entries
            else:
                m = as_stream_message(message)
                held.append((m.entry_stream, m.entry_id, m.deliveries))
        try:
            self.leases.hand_back(held)
        except CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]
        finally:
            for stream, sid, _ in held:
                self.broker.release(self.queue, stream, sid)

    def close(self) -> None:
        for g in self._gathering:  # gathered, not yet a message: handed back with the rest
            if g.items:
                self._local.append(self._batch(g.items, g.options))
                g.items = []
        super().close()
