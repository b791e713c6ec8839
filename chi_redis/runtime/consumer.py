"""``StreamsConsumer``: reads a queue's streams for Dramatiq's consumer thread.

One loop iteration is one pipelined round trip: flush buffered acks, promote due delayed
messages, XREADGROUP the private stream and every bound topic stream.  Every few seconds it
also refreshes leases (:mod:`.leases`), reclaims entries idle past the lease (XAUTOCLAIM),
dead-lettering those whose handler started ``max_deliveries`` times (:mod:`.crashes`),
discovers new topics for wildcard subscriptions, and removes consumers with nothing pending.
Leases: :mod:`.leases`; dead letters: :mod:`.deadletters`; cluster reads: :mod:`.slotreads`.
An entry it cannot turn into a message is dead-lettered (reason: its DecodeError's kind),
never fatal.  Once its worker shuts down (``stopping``) it reads and reclaims nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import dramatiq
import redis.exceptions as rex
from dramatiq.errors import ConnectionClosed

from ..backend.cluster import is_cluster
from ..backend.scripts import script
from ..errors import DecodeError
from ..events.filters import EntryView
from ..observe.metrics import labelled
from .crashes import CrashGuard
from .deadletters import DeadLetterWriter
from .deadletters import flush_log as flush_dead_letter_log
from .dedupe import refresh_claims
from .inline import Inline
from .leases import AckBuffer, Leases
from .leases import flush_log as flush_reclaim_log
from .messages import StreamMessage, as_stream_message, malformed, private_message, topic_message
from .readahead import ReadAhead
from .slotreads import queue_reads

if TYPE_CHECKING:
    from .broker import StreamsBroker

__all__ = ["StreamMessage", "StreamsConsumer"]

logger = logging.getLogger(__name__)

_REQUIRED = (b"id", b"type", b"ts", b"data")
_REQUIRED_SET = frozenset(_REQUIRED)
_CONNECTION_ERRORS = (rex.ConnectionError, rex.TimeoutError)
FAST_WORK_S = 0.01
#: While entries are in flight, a read blocks at most about two handler runs (never less than
#: this, nor more than ``ACK_WAIT_UNKNOWN_MS`` before the first run was timed): their acks
#: are buffered until the next read, so a long BLOCK would hold them (docs/design.md §5.2).
ACK_WAIT_MIN_MS, ACK_WAIT_UNKNOWN_MS = 10, 50
_HANDLED = "chi_events_handled_total"
#: After a read found the workers idle, how long to wait for one to take its first message.
HAND_OFF_WAIT_S = 0.001


class StreamsConsumer(dramatiq.Consumer):
    """Consumes one queue (a subscription or a plain task queue).  Not thread-safe except
    for ``ack``/``nack``, which worker threads call and which touch only broker state."""

    READ_AHEAD = True  #: send the next read once a read returned a backlog (_read_ahead)

    def __init__(self, broker: StreamsBroker, queue: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.client = broker.client
        self.queue = queue
        self.prefetch = max(1, prefetch)  # the Worker's (or the configured) prefetch
        self._adaptive = broker.options.prefetch is None and broker.options.max_prefetch > 1
        self.timeout_ms = max(1, timeout)
        self.sub = broker.subscriptions.get(queue)
        self.private = broker.keys.queue(queue)
        self.delayed = broker.keys.delayed(queue)
        self.name = broker.consumer_id
        self.state = broker.states[queue]
        self.opts = broker.options
        self.max_deliveries = (
            self.sub.options.max_deliveries if self.sub else None
        ) or self.opts.max_deliveries
        self._local: deque[StreamMessage] = deque()
        self._topic_of: dict[str, str] = {}
        self._streams: list[str] = []
        self._promote = script("promote")
        self.leases = Leases(self.client, queue, self.name, self.opts.lease_ms)
        self.dead_letters = DeadLetterWriter(broker)
        self.crashes = CrashGuard(broker, queue, self.max_deliveries)
        self.acks = AckBuffer(self.state, queue, self.private)
        self._next_due_ms, self._hand_off = 0, False
        self._alone = False  #: the last message handed out was delivered again (_pop)
        self.ahead, self.inline = ReadAhead(self.acks), Inline(self)
        self.READ_AHEAD = self.READ_AHEAD and not is_cluster(self.client)  # slotreads
        self._warned_at, self._sweeps, self.stopping = 0.0, 0, False  # stopping: read no more
        try:
            self._refresh_streams()
        except _CONNECTION_ERRORS as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]
        now = time.monotonic()
        self._next_lease = now + self.opts.lease_ms / 3000
        self._next_reclaim = now  # reclaim at once: picks up what a dead worker left
        self._next_registry = now + self.opts.registry_refresh_ms / 1000

    # Dramatiq interface --------------------------------------------------------------------
    def __next__(self) -> StreamMessage | None:
        try:
            return self.inline.take(self._next())  # run here when the workers are idle
        except _CONNECTION_ERRORS as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def ack(self, message: dramatiq.MessageProxy) -> None:
        m = as_stream_message(message)
        if m.keep_pending:
            # Its retry copy was not written: leave the entry pending for reclaim.
            self.broker.release(m.entry_queue, m.entry_stream, m.entry_id)
            return
        outcome = None
        if self.sub is not None:
            # Acked after a failure: the Retries middleware wrote a retry copy.  Counted
            # with the ack, added to the metric when the acks are flushed.
            failed = m._exception is not None  # Dramatiq offers no public getter
            outcome = "retried" if failed else "ok"
        if m.deliveries > 1 and self.crashes.ack_now(m, outcome):  # delivered again: now
            return
        self.broker.buffer_ack(m.entry_queue, m.entry_stream, m.entry_id, outcome)

    def nack(self, message: dramatiq.MessageProxy) -> None:
        m = as_stream_message(message)
        if m.keep_pending:
            self.broker.release(m.entry_queue, m.entry_stream, m.entry_id)
            return
        exc = m._exception  # Dramatiq keeps the failure here and offers no public getter
        dl = self.dead_letters
        try:
            dl.message(m, queue=m.entry_queue, stream=m.entry_stream, sid=m.entry_id,
                       deliveries=m.deliveries, reason=dl.reason(m, exc), exc=exc)
        except _CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]

    def requeue(self, messages: Iterable[dramatiq.MessageProxy]) -> None:
        """Hand messages back: to a placeholder consumer, marked long idle, so the next
        reclaim sweep of any worker takes them at once.  The delivery count is set back
        (RETRYCOUNT), so a hand-back does not count as a delivery."""
        msgs = [as_stream_message(m) for m in messages]
        try:
            self.leases.hand_back((m.entry_stream, m.entry_id, m.deliveries) for m in msgs)
        except _CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]
        finally:
            # Handed back or (Redis unreachable) left pending: their lease expires, reclaimed.
            for m in msgs:
                self.broker.release(m.entry_queue, m.entry_stream, m.entry_id)

    def close(self) -> None:
        with contextlib.suppress(rex.RedisError):  # else pending: its lease expires
            self._take_ahead(again=False)  # what it read is this consumer's: hand it back
        local, self._local = list(self._local), deque()
        try:
            if local:
                self.requeue(local)
            self.acks.flush(self.client)
            for stream in self._streams:
                self.leases.leave(stream)
        except (rex.RedisError, ConnectionClosed):
            logger.debug("consumer %s closed without cleanup (Redis unreachable)", self.queue)

    # the loop --------------------------------------------------------------------------------
    def _next(self) -> StreamMessage | None:
        if self.stopping:
            return self._wait()
        if self._local:
            return self._pop()
        if self._hand_off:
            self._hand_off = False
            self._let_worker_start()
        if self.ahead:
            self._take_ahead()
            if self._local:
                return self._pop()
        now = time.monotonic()
        if now >= min(self._next_lease, self._next_reclaim, self._next_registry):
            self._maintain(now)
            if self._local:
                return self._pop()
        window = self._window()
        low_water = max(1, window // 2)
        free = window - len(self.state.inflight)
        if free < low_water:
            # Read when half the window is free (not a round trip per ack); buffered acks
            # go out with that read (or the next maintenance, well within the lease).
            with self.state.cond:
                if window - len(self.state.inflight) < low_water:
                    self.state.cond.wait(timeout=self._wait_s(min(self.timeout_ms, 200)))
            return None
        if self.READ_AHEAD and window > self.prefetch:
            free = min(free, window - low_water)  # fast handlers: room for a read ahead
        self._read(free, now)
        return self._pop() if self._local else None

    def _pop(self) -> StreamMessage | None:
        """The next message for the Worker.  One delivered again runs alone: not before the
        entries handed out before it end, nor beside any other (runtime/crashes.py)."""
        m = self._local[0]
        if (m.deliveries > 1 or self._alone) and len(self.state.inflight) > len(self._local):
            return self._wait()
        self._alone = m.deliveries > 1
        return self._local.popleft()

    def _wait(self) -> StreamMessage | None:
        """Wait a little, keeping acks, leases and (unless the worker shuts down: no reads
        or reclaims then, ChiMiddleware) maintenance going."""
        self._maintain(time.monotonic())
        with self.state.cond:
            self.state.cond.wait(timeout=self._wait_s(50))
        return None

    def _wait_s(self, most_ms: int) -> float:
        """At most ``most_ms``, never past the next maintenance (no sweeps once stopping)."""
        due = min(self._next_lease, self._next_registry,
                  float("inf") if self.stopping else self._next_reclaim)
        return max(0.0, min(most_ms / 1000, due - time.monotonic()))

    def _let_worker_start(self) -> None:
        """Wait, GIL released, at most ``HAND_OFF_WAIT_S`` for a worker thread to take a
        message off Dramatiq's work queue: building the next read (≈100 µs of Python) made
        the worker just woken wait for the GIL (docs/benchmarks.md, latency)."""
        work: Any = getattr(threading.current_thread(), "work_queue", None)
        taken = getattr(work, "not_full", None)  # notified by every get() of a queue.Queue
        if taken is not None:
            with taken:
                if work._qsize():  # not qsize(): it takes the lock held here
                    taken.wait(HAND_OFF_WAIT_S)

    def _window(self) -> int:
        """How many entries this queue may hold: the prefetch, widened for fast handlers
        to about ``FAST_WORK_S`` of work per prefetch slot (capped at ``max_prefetch``)."""
        avg = self.state.avg_run_s
        if not self._adaptive or avg <= 0.0:
            return self.prefetch
        wide = int(self.prefetch * FAST_WORK_S / avg)
        return max(self.prefetch, min(self.opts.max_prefetch, wide))

    def _block_ms(self, now: float) -> int | None:
        until_maint = (min(self._next_lease, self._next_reclaim) - now) * 1000
        block = min(self.opts.block_ms, self.timeout_ms, until_maint)
        if self.state.inflight:
            avg_ms = self.state.avg_run_s * 2000
            block = min(block, max(ACK_WAIT_MIN_MS, avg_ms) if avg_ms else ACK_WAIT_UNKNOWN_MS)
        if self._next_due_ms > 0:
            block = min(block, self._next_due_ms)
        block = int(block)
        return block if block >= 1 else None

    def _read_pipe(self, free: int, now: float) -> tuple[Any, dict[str, list[bytes]]]:
        acks = self.acks.take()
        pipe = self.client.pipeline(transaction=False)
        self.acks.queue(pipe, acks)
        pipe.evalsha(self._promote.sha, 2, self.delayed, self.private, 100)
        return queue_reads(pipe, self.queue, self.name, self._streams, free,
                           self._block_ms(now)), acks

    def _read(self, free: int, now: float) -> None:
        pipe, acks = self._read_pipe(free, now)
        try:
            results = pipe.execute(raise_on_error=False)
        except _CONNECTION_ERRORS:
            self.acks.restore(acks)
            raise
        self._absorb(results)
        self._read_ahead(now)

    def _read_ahead(self, now: float) -> None:
        """After a read that returned half the window, send the next now: Redis answers while
        the workers run this one's entries (the window bounds both); not if maintenance is due."""
        window = self._window()
        low_water = max(1, window // 2)
        free = window - len(self.state.inflight)
        if (self.READ_AHEAD and len(self._local) >= low_water and free >= low_water
                and now < min(self._next_lease, self._next_reclaim, self._next_registry)):
            self.ahead.send(*self._read_pipe(free, now))

    def _take_ahead(self, again: bool = True) -> None:
        """Take the entries of the read sent ahead (if any), and maybe send the next."""
        if self.ahead:
            self._absorb(self.ahead.replies())
            if again:
                self._read_ahead(time.monotonic())

    def _absorb(self, results: list[Any]) -> None:
        *ack_results, promoted, read = results
        idle = not self.state.inflight
        self.acks.check(ack_results)
        if isinstance(promoted, rex.NoScriptError):
            self.client.script_load(self._promote.source)
            self._next_due_ms = 1
        elif isinstance(promoted, int):
            self._next_due_ms = promoted if promoted >= 0 else 0
        if isinstance(read, Exception):
            self._read_error(read)
            return
        for stream, entries in read or ():
            self._handle(stream.decode() if isinstance(stream, bytes) else stream, entries)
        self._hand_off = idle and bool(self._local)

    def _read_error(self, exc: Exception) -> None:
        text = str(exc)
        if "NOGROUP" not in text and "no longer exists" not in text:
            raise exc
        self._recover_groups()

    def _recover_groups(self) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            logger.critical(  # the entries it had, pending or unread, are gone
                "stream state lost: consumer group %r missing (Redis restarted without"
                " persistence, flushed, or a key deleted): re-created at the first entry",
                self.queue)
        for stream in self._streams:
            self.broker.ensure_group(stream, self.queue, "0")
        if self.sub is not None:
            self.broker.register(self.sub)
        self.leases.reset_cursors()
        time.sleep(0.05)  # never hot-loop on a server that keeps losing state

    # entries ---------------------------------------------------------------------------------
    def _handle(
        self, stream: str, entries: Any, deliveries: dict[bytes, int] | None = None
    ) -> None:
        taken: list[StreamMessage] = []
        private = stream == self.private
        skipped = 0
        for sid, fields in entries:
            if fields is None:
                continue
            count = deliveries.get(sid, 1) if deliveries else 1
            try:
                msg = (self._from_private(sid, fields, count) if private
                       else self._from_topic(stream, sid, fields, count))
            except DecodeError as exc:
                self._reject(stream, sid, fields, exc.kind, count, exc)
                continue
            if msg is not None:
                taken.append(msg)
            elif not private:
                skipped += 1
        if skipped and self.sub is not None:  # acked without delivery: counted per read
            labelled(_HANDLED, self.queue, "filtered").inc(skipped)
        if taken:
            with self.state.cond:
                self.state.inflight.update(dict.fromkeys((stream, m.entry_id) for m in taken))
            self._local.extend(taken)

    def _reject(self, stream: str, sid: bytes, f: dict[bytes, bytes], reason: str, count: int,
                exc: BaseException | None = None) -> None:
        """Dead-letter an entry that never becomes a Dramatiq message."""
        self.dead_letters.entry(self.queue, stream, sid, f, reason, count,
                                topic=self._topic_of.get(stream, ""), exc=exc)

    def _from_topic(
        self, stream: str, sid: bytes, f: dict[bytes, bytes], count: int
    ) -> StreamMessage | None:
        """The message of a topic entry; None if this subscription skips it (acked)."""
        if not f.keys() >= _REQUIRED_SET:
            missing = next(k for k in _REQUIRED if k not in f).decode()
            raise DecodeError(f"missing field {missing!r}", stream=stream,
                              entry_id=sid.decode(), kind="missing_field")
        topic = self._topic_of[stream]
        sub = self.sub
        if b"arc" in f or sub is None or not sub.accepts(
            EntryView(f[b"type"].decode(errors="replace"), topic, f.get(b"meta", b"{}"))
        ):
            self.broker.buffer_ack(self.queue, stream, sid)
            return None
        try:
            named = {k.decode(): v for k, v in f.items()}
        except UnicodeDecodeError:
            raise DecodeError("a field name is not UTF-8", stream=stream,
                              entry_id=sid.decode()) from None
        message = topic_message(
            self.queue, (topic, named), f"{self.queue}:{f[b'id'].decode(errors='replace')}",
            int(sid.partition(b"-")[0]),
        )
        proxy = StreamMessage(message, self.queue, stream, sid, count)
        proxy.entry_fields = f
        return proxy

    def _from_private(self, sid: bytes, f: dict[bytes, bytes], count: int) -> StreamMessage:
        """The message of a private-stream entry; DecodeError unless it is well formed."""
        sub = self.sub.name if self.sub is not None else None
        message = private_message(f, sid, self.queue, self.private, lambda m: malformed(m, sub))
        return StreamMessage(message, self.queue, self.private, sid, count)

    # maintenance ---------------------------------------------------------------------------
    def _maintain(self, now: float) -> None:
        self.acks.flush(self.client)
        flush_dead_letter_log()  # the "… N more" summaries of a storm that has passed
        flush_reclaim_log()
        if now >= self._next_lease:
            self._refresh_leases()
            refresh_claims(self.client, self.state, self.opts.lease_ms)  # dedupe claims
            self._next_lease = now + self.opts.lease_ms / 3000
        if now >= self._next_reclaim and not self.stopping:
            self._refresh_streams()
            self._reclaim()
            self._sweeps += 1
            if self._sweeps % 12 == 1:
                self.leases.reap(self._streams)  # idle consumers with nothing pending
            self._next_reclaim = now + self.opts.reclaim_interval_ms / 1000
        if now >= self._next_registry:
            if self.sub is not None:
                self.broker.register(self.sub)
            self._next_registry = now + self.opts.registry_refresh_ms / 1000

    def _refresh_streams(self) -> None:
        streams = self.broker.streams_of(self.queue)
        for s in streams:
            if s not in self._topic_of and s != self.private:
                self._topic_of[s] = self.broker.keys.topic_from_stream(s)
                if self._streams:  # a topic that appeared later: start at its first entry
                    self.broker.ensure_group(s, self.queue, "0")
        self._streams = streams

    def _refresh_leases(self) -> None:
        with self.state.cond:
            held = list(self.state.inflight)
        self.leases.refresh(held)

    def _reclaim(self) -> None:
        free = self._window() - len(self.state.inflight)
        for stream in self._streams:
            if free <= 0:
                return
            try:
                claimed, counts = self.leases.claim_idle(stream, free, slack=len(
                    self.state.inflight) + self._window())
            except rex.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._recover_groups()
                    return
                raise
            free -= len(claimed)
            claimed, doomed = self.crashes.sort(stream, claimed, counts)
            for sid, fields, count in doomed:  # started max_deliveries times (.crashes)
                self._reject(stream, sid, fields, "max_deliveries", count)
            if claimed:
                self._handle(stream, claimed, counts)
