"""``StreamsConsumer``: reads a queue's streams for Dramatiq's consumer thread.

One loop iteration is one pipelined round trip: flush buffered acks, promote due delayed
messages, XREADGROUP the private stream and every bound topic stream.  Every few seconds it
also refreshes the leases of entries this process holds, reclaims entries idle past the
lease (XAUTOCLAIM) — dead-lettering those delivered more than ``max_deliveries`` times —
discovers new topics for wildcard subscriptions, and removes consumers with nothing pending.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeGuard

import dramatiq
import redis.exceptions as rex
from dramatiq.errors import ActorNotFound, ConnectionClosed
from dramatiq.middleware import SkipMessage

from ..backend.scripts import script
from ..errors import DecodeError
from ..events.filters import EntryView
from ..observe.metrics import counter
from .deadletters import dead_letter_fields, encode_body
from .encoder import decode_message, encode_message

if TYPE_CHECKING:
    from .broker import StreamsBroker

__all__ = ["StreamMessage", "StreamsConsumer"]

logger = logging.getLogger(__name__)

ABANDONED = "chi-abandoned"
ABANDON_IDLE_MS = 10**12
_REQUIRED = (b"id", b"type", b"ts", b"data")
_REQUIRED_SET = frozenset(_REQUIRED)
_CONNECTION_ERRORS = (rex.ConnectionError, rex.TimeoutError)
FAST_WORK_S = 0.01


class StreamMessage(dramatiq.MessageProxy):
    """A message proxy that knows the stream entry to ack; prints no payload."""

    def __init__(
        self, message: dramatiq.Message[Any], queue: str, stream: str, entry_id: bytes,
        deliveries: int,
    ) -> None:
        super().__init__(message)
        self._chi_queue = queue
        self._chi_stream = stream
        self._chi_entry = entry_id
        self._chi_deliveries = deliveries
        # Set when a retry copy of this message could not be written: the entry is then
        # left pending (not acked) so that the lease expires and it is reclaimed.
        self._chi_keep = False
        # The topic entry's fields as read (bytes keys), so the runner need not rebuild them.
        self._chi_fields: dict[bytes, bytes] | None = None

    def __str__(self) -> str:
        return f"{self._message.actor_name}({self._message.message_id})"


def as_stream_message(message: dramatiq.MessageProxy) -> StreamMessage:
    """``message`` as the StreamMessage this broker made (Dramatiq hands it back to us)."""
    if not isinstance(message, StreamMessage):
        raise TypeError(f"not a message of a StreamsBroker: {type(message).__name__}")
    return message


class StreamsConsumer(dramatiq.Consumer):
    """Consumes one queue (a subscription or a plain task queue).  Not thread-safe except
    for ``ack``/``nack``, which worker threads call and which touch only broker state."""

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
        self._cursors: dict[str, str] = {}
        self._promote = script("promote")
        self._lease = script("lease")
        self._delcons = script("delconsumer")
        self._next_due_ms = 0
        self._warned_at = 0.0
        self._sweeps = 0
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
            return self._next()
        except _CONNECTION_ERRORS as exc:
            raise ConnectionClosed(exc) from None  # type: ignore[no-untyped-call]

    def ack(self, message: dramatiq.MessageProxy) -> None:
        m = as_stream_message(message)
        if m._chi_keep:
            # Its retry copy was not written: leave the entry pending for reclaim.
            self.broker.release(m._chi_queue, m._chi_stream, m._chi_entry)
            return
        self.broker.buffer_ack(m._chi_queue, m._chi_stream, m._chi_entry)

    def nack(self, message: dramatiq.MessageProxy) -> None:
        m = as_stream_message(message)
        if m._chi_keep:
            self.broker.release(m._chi_queue, m._chi_stream, m._chi_entry)
            return
        exc = m._exception
        try:
            self._dead_letter(m, self._reason(m, exc), exc)
        except _CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]

    def _reason(self, message: StreamMessage, exc: BaseException | None) -> str:
        if isinstance(exc, ActorNotFound):
            return "unknown_actor"
        if isinstance(exc, DecodeError | dramatiq.DecodeError):
            return "decode"
        if isinstance(exc, SkipMessage):
            return "skipped"  # e.g. AgeLimit
        if exc is None:
            return "failed"
        throws = message.options.get("throws")
        if not _exception_types(throws):  # absent, or names after a trip through Redis
            try:
                throws = self.broker.get_actor(message.actor_name).options.get("throws")
            except ActorNotFound:
                throws = None
        if _exception_types(throws) and isinstance(exc, throws):
            return "not_retryable"
        return "retries_exhausted"

    def requeue(self, messages: Iterable[dramatiq.MessageProxy]) -> None:
        """Hand messages back: to a placeholder consumer, marked long idle, so the next
        reclaim sweep of any worker takes them at once.  The delivery count is set back
        (RETRYCOUNT), so a hand-back does not count as a delivery."""
        msgs = [as_stream_message(m) for m in messages]
        groups: dict[tuple[str, int], list[bytes]] = {}
        for m in msgs:
            key = (m._chi_stream, max(0, m._chi_deliveries - 1))
            groups.setdefault(key, []).append(m._chi_entry)
        try:
            if groups:
                pipe = self.client.pipeline(transaction=False)
                for (stream, count), ids in groups.items():
                    pipe.xclaim(
                        stream, self.queue, ABANDONED, 0, list(ids), idle=ABANDON_IDLE_MS,
                        retrycount=count, justid=True,
                    )
                for r in pipe.execute(raise_on_error=False):
                    if isinstance(r, Exception):
                        logger.warning("could not hand back entries of %s: %s", self.queue, r)
        except _CONNECTION_ERRORS as e:
            raise ConnectionClosed(e) from None  # type: ignore[no-untyped-call]
        finally:
            # Either handed back or, if Redis is unreachable, left pending: the lease of
            # entries we no longer track expires and any worker reclaims them.
            for m in msgs:
                self.broker.release(m._chi_queue, m._chi_stream, m._chi_entry)

    def close(self) -> None:
        local, self._local = list(self._local), deque()
        try:
            if local:
                self.requeue(local)
            self._flush_acks()
            for stream in self._streams:
                self._eval(self._delcons, [stream], [self.queue, self.name])
        except (rex.RedisError, ConnectionClosed):
            logger.debug("consumer %s closed without cleanup (Redis unreachable)", self.queue)

    # the loop --------------------------------------------------------------------------------
    def _next(self) -> StreamMessage | None:
        if self._local:
            return self._local.popleft()
        now = time.monotonic()
        if now >= min(self._next_lease, self._next_reclaim, self._next_registry):
            self._maintain(now)
            if self._local:
                return self._local.popleft()
        window = self._window()
        low_water = max(1, window // 2)
        free = window - len(self.state.inflight)
        if free < low_water:
            # Read again only when half the prefetch window is free: refilling one slot
            # per ack would cost a round trip per message.  Buffered acks go out with
            # that read (or with the next maintenance, well within the lease).
            with self.state.cond:
                if window - len(self.state.inflight) < low_water:
                    self.state.cond.wait(timeout=min(self.timeout_ms, 200) / 1000)
            return None
        self._read(free, now)
        return self._local.popleft() if self._local else None

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
        if self._next_due_ms > 0:
            block = min(block, self._next_due_ms)
        block = int(block)
        return block if block >= 1 else None

    def _read(self, free: int, now: float) -> None:
        acks = self._take_acks()
        pipe = self.client.pipeline(transaction=False)
        self._queue_acks(pipe, acks)
        pipe.evalsha(self._promote.sha, 2, self.delayed, self.private, 100)
        pipe.xreadgroup(
            self.queue, self.name, dict.fromkeys(self._streams, ">"), count=free,
            block=self._block_ms(now),
        )
        try:
            results = pipe.execute(raise_on_error=False)
        except _CONNECTION_ERRORS:
            self._restore_acks(acks)
            raise
        *ack_results, promoted, read = results
        self._check_acks(ack_results)
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

    def _read_error(self, exc: Exception) -> None:
        text = str(exc)
        if "NOGROUP" in text or "no longer exists" in text:
            self._recover_groups()
            return
        raise exc

    def _recover_groups(self) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            logger.warning(
                "consumer group %r missing (Redis restarted without persistence, or a key was"
                " deleted): re-creating it at the first entry", self.queue,
            )
        for stream in self._streams:
            self.broker._ensure_group(stream, self.queue, "0")
        if self.sub is not None:
            self.broker._register(self.sub)
        self._cursors.clear()
        time.sleep(0.05)  # never hot-loop on a server that keeps losing state

    # entries ---------------------------------------------------------------------------------
    def _handle(
        self, stream: str, entries: Any, deliveries: dict[bytes, int] | None = None
    ) -> None:
        taken: list[StreamMessage] = []
        private = stream == self.private
        for sid, fields in entries:
            if fields is None:
                continue
            count = deliveries.get(sid, 1) if deliveries else 1
            if count > self.max_deliveries:
                self._dead_letter_entry(stream, sid, fields, "max_deliveries", count)
                continue
            if private:
                msg = self._from_private(sid, fields, count)
            else:
                msg = self._from_topic(stream, sid, fields, count)
            if msg is not None:
                taken.append(msg)
        if taken:
            inflight = self.state.inflight
            with self.state.cond:
                for m in taken:
                    inflight[(stream, m._chi_entry)] = None
            self._local.extend(taken)

    def _from_topic(
        self, stream: str, sid: bytes, f: dict[bytes, bytes], count: int
    ) -> StreamMessage | None:
        if not f.keys() >= _REQUIRED_SET:
            missing = next(k for k in _REQUIRED if k not in f).decode()
            self._dead_letter_entry(stream, sid, f, "decode", count, DecodeError(
                f"missing field {missing!r}", stream=stream, entry_id=sid.decode()))
            return None
        topic = self._topic_of[stream]
        sub = self.sub
        if b"arc" in f or sub is None or not sub.accepts(
            EntryView(f[b"type"].decode(errors="replace"), topic, f.get(b"meta", b"{}"))
        ):
            self.broker.buffer_ack(self.queue, stream, sid)
            return None
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=self.queue, actor_name=self.queue,
            args=(topic, {k.decode(): v for k, v in f.items()}), kwargs={}, options={},
            message_id=f"{self.queue}:{f[b'id'].decode(errors='replace')}",
            message_timestamp=int(sid.split(b"-", 1)[0]),
        )
        proxy = StreamMessage(message, self.queue, stream, sid, count)
        proxy._chi_fields = f
        return proxy

    def _from_private(self, sid: bytes, f: dict[bytes, bytes], count: int) -> StreamMessage | None:
        try:
            message = decode_message(f[b"m"])
        except (KeyError, ValueError) as exc:
            self._dead_letter_entry(self.private, sid, f, "decode", count, DecodeError(
                str(exc), stream=self.private, entry_id=sid.decode()))
            return None
        if message.queue_name != self.queue:
            message = message.copy(queue_name=self.queue)
        return StreamMessage(message, self.queue, self.private, sid, count)

    # dead letters --------------------------------------------------------------------------
    def _dead_letter_entry(
        self, stream: str, sid: bytes, f: dict[bytes, bytes], reason: str, count: int,
        exc: BaseException | None = None,
    ) -> None:
        """Dead-letter an entry the consumer itself rejects (no Dramatiq message yet)."""
        if stream == self.private and b"m" in f:
            try:
                msg = decode_message(f[b"m"])
            except ValueError:
                pass
            else:
                self._dead_letter(StreamMessage(msg, self.queue, stream, sid, count), reason, exc)
                return
        topic = self._topic_of.get(stream, "")
        fields = dead_letter_fields(
            sub=self.queue, reason=reason, exc=exc, kind="event" if topic else "raw",
            body=encode_body(f), event_id=f.get(b"id", b"").decode(errors="replace"),
            type_=f.get(b"type", b"").decode(errors="replace"), topic=topic,
            source_stream=stream, source_id=sid.decode(), deliveries=count, attempts=count,
        )
        self._write_dead_letter(stream, sid, fields)

    def _dead_letter(self, message: StreamMessage, reason: str, exc: BaseException | None) -> None:
        options = message.options
        args = message.args
        sub = self.broker.subscriptions.get(message._chi_queue)
        is_event = sub is not None and message.actor_name == sub.name and len(args) == 2
        if is_event:
            topic, fields = args
            body = encode_body(fields)
            event_id = fields.get("id", b"").decode(errors="replace")
            type_ = fields.get("type", b"").decode(errors="replace")
        else:
            topic, body = "", encode_message(message)
            event_id, type_ = message.message_id, message.actor_name
        fields_out = dead_letter_fields(
            sub=message._chi_queue, reason=reason, exc=exc, kind="event" if is_event else "task",
            body=body, event_id=event_id, type_=type_, topic=topic,
            source_stream=options.get("src") or message._chi_stream,
            source_id=options.get("src_id") or message._chi_entry.decode(),
            deliveries=message._chi_deliveries,
            # Retries has already counted the failed run when it gave up.
            attempts=options.get("retries", 0) + (reason != "retries_exhausted"),
            first_failure_ms=options.get("first_failure"),
            tb=None if exc is not None else options.get("traceback"),
        )
        self._write_dead_letter(
            message._chi_stream, message._chi_entry, fields_out, message._chi_queue
        )

    def _write_dead_letter(
        self, stream: str, sid: bytes, fields: dict[str, Any], queue: str | None = None
    ) -> None:
        """XACK the entry and XADD its dead letter in one script, at most once."""
        queue = queue or self.queue
        keys = self.broker.keys
        argv: list[Any] = [
            queue, sid, "1" if stream == keys.queue(queue) else "0", self.opts.dlq_maxlen,
        ]
        for k, v in fields.items():
            argv += (k, v)
        try:
            written = self._eval(script("deadletter"), [stream, keys.dlq(queue)], argv)
        except _CONNECTION_ERRORS:
            raise  # the caller retries (Dramatiq retries nack); the script is idempotent
        except rex.RedisError as exc:
            # Leave the entry pending: its lease expires and a reclaim tries again.
            logger.error("could not dead-letter %s entry %s of %s: %s", queue, sid.decode(),
                         stream, exc)
            self.broker.release(queue, stream, sid)
            return
        if written:
            counter("chi_dead_lettered_total").labels(queue, fields["reason"]).inc()
            logger.warning(
                "dead-lettered %s entry %s of %s: %s", queue, sid.decode(), stream, fields["reason"]
            )
        self.broker.release(queue, stream, sid)

    # acks --------------------------------------------------------------------------------------
    def _take_acks(self) -> dict[str, list[bytes]]:
        state = self.state
        with state.cond:
            if not any(state.acks.values()):
                return {}
            acks = {s: ids for s, ids in state.acks.items() if ids}
            state.acks.clear()
        return acks

    def _restore_acks(self, acks: dict[str, list[bytes]]) -> None:
        with self.state.cond:
            for s, ids in acks.items():
                self.state.acks[s][:0] = ids

    def _queue_acks(self, pipe: Any, acks: dict[str, list[bytes]]) -> None:
        for stream, ids in acks.items():
            pipe.xack(stream, self.queue, *ids)
            if stream == self.private:
                pipe.xdel(stream, *ids)

    def _check_acks(self, results: list[Any]) -> None:
        for r in results:
            if isinstance(r, Exception):  # NOGROUP after a restart: those entries are gone
                logger.warning("ack failed on %s: %s", self.queue, r)

    def _flush_acks(self) -> None:
        acks = self._take_acks()
        if not acks:
            return
        pipe = self.client.pipeline(transaction=False)
        self._queue_acks(pipe, acks)
        try:
            self._check_acks(pipe.execute(raise_on_error=False))
        except _CONNECTION_ERRORS:
            self._restore_acks(acks)
            raise

    # maintenance ---------------------------------------------------------------------------
    def _maintain(self, now: float) -> None:
        self._flush_acks()
        if now >= self._next_lease:
            self._refresh_leases()
            self._next_lease = now + self.opts.lease_ms / 3000
        if now >= self._next_reclaim:
            self._refresh_streams()
            self._reclaim()
            self._sweeps += 1
            if self._sweeps % 12 == 1:
                self._reap_consumers()
            self._next_reclaim = now + self.opts.reclaim_interval_ms / 1000
        if now >= self._next_registry:
            if self.sub is not None:
                self.broker._register(self.sub)
            self._next_registry = now + self.opts.registry_refresh_ms / 1000

    def _refresh_streams(self) -> None:
        streams = self.broker.streams_of(self.queue)
        for s in streams:
            if s not in self._topic_of and s != self.private:
                self._topic_of[s] = self.broker.keys.topic_from_stream(s)
                if self._streams:  # a topic that appeared later: start at its first entry
                    self.broker._ensure_group(s, self.queue, "0")
        self._streams = streams

    def _refresh_leases(self) -> None:
        with self.state.cond:
            held = list(self.state.inflight)
        by_stream: dict[str, list[bytes]] = {}
        for stream, sid in held:
            by_stream.setdefault(stream, []).append(sid)
        for stream, ids in by_stream.items():
            for i in range(0, len(ids), 500):
                self._eval(self._lease, [stream], [self.queue, self.name, *ids[i : i + 500]])

    def _reclaim(self) -> None:
        free = self._window() - len(self.state.inflight)
        for stream in self._streams:
            if free <= 0:
                return
            start = self._cursors.get(stream, "0-0")
            try:
                res = self.client.xautoclaim(
                    stream, self.queue, self.name, self.opts.lease_ms, start, count=free
                )
            except rex.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._recover_groups()
                    return
                raise
            # Follow the cursor across sweeps so a long PEL of live entries does not
            # hide idle ones behind it.
            cursor = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
            self._cursors[stream] = cursor
            claimed, deleted = res[1], (res[2] if len(res) > 2 else [])
            if deleted:
                counter("chi_trimmed_unprocessed_total").labels(self.queue).inc(len(deleted))
                logger.warning(
                    "%d pending entries of %s on %s were trimmed before they were processed",
                    len(deleted), self.queue, stream,
                )
            claimed = [c for c in claimed if c[1] is not None]
            if not claimed:
                continue
            ids = [c[0] for c in claimed]
            pending = self.client.xpending_range(
                stream, self.queue, min=min(ids, key=_k), max=max(ids, key=_k),
                count=len(ids) + len(self.state.inflight) + self._window(),
                consumername=self.name,
            )
            counts = {_bytes(p["message_id"]): int(p["times_delivered"]) for p in pending}
            self._handle(stream, claimed, counts)
            free -= len(claimed)

    def _reap_consumers(self) -> None:
        """Remove consumers with nothing pending that have been idle past the lease."""
        for stream in self._streams:
            try:
                consumers = self.client.xinfo_consumers(stream, self.queue)
            except rex.ResponseError:
                continue
            for c in consumers:
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                if name != self.name and not c["pending"] and c["idle"] > self.opts.lease_ms:
                    self._eval(self._delcons, [stream], [self.queue, name])

    def _eval(self, s: Any, keys: list[str], argv: list[Any]) -> Any:
        return s.run(self.client, keys, argv)


def _exception_types(
    value: Any,
) -> TypeGuard[type[BaseException] | tuple[type[BaseException], ...]]:
    """Whether ``value`` can be the second argument of ``isinstance`` (a ``throws``)."""
    if isinstance(value, type):
        return True
    return isinstance(value, tuple) and bool(value) and all(isinstance(t, type) for t in value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _k(sid: bytes) -> tuple[int, int]:
    ms, _, seq = sid.partition(b"-")
    return int(ms), int(seq or 0)
