"""Batch subscriptions: the message that carries a batch, and the actor body that runs it.

A subscription declared with ``batch_size=N`` gets ``list[Event]`` (docs/design.md §5.10).
Its consumer (:mod:`.batch_consumer`) gathers up to N entries into one Dramatiq message, a
:class:`BatchMessage`, whose only argument is the list of its *members*: ``[topic, fields,
source stream, source entry id]``, the fields as read (names are bytes).  The same shape
travels through Redis in retry copies and in the parts a failing batch is split into; a
single-event message ``(topic, fields)`` (a redrive, a targeted replay) is a batch of one.

The actor body (:func:`make_batch_runner`) decodes each member (one that cannot be decoded
is set aside for its own dead letter), skips members already handled when ``dedupe`` is on,
calls the handler once, and records on the message which members failed: all of them when
the handler raised, those it named when it raised :class:`~chi_redis.BatchFailed`.  The
retry copy Dramatiq's Retries writes then carries only those.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import TYPE_CHECKING, Any

import dramatiq

from ..errors import BatchFailed, DecodeError
from ..events.batchdecode import decode_members
from .consumer import StreamMessage
from .runner import current_message
from .subscriptions import Delivery, Subscription

if TYPE_CHECKING:
    from .broker import StreamsBroker

__all__ = [
    "BatchMessage", "BatchRunner", "Member", "attempts_before", "make_batch_runner", "members_of",
]

#: ``[topic, fields (bytes names), source stream, source entry id]``.
Member = list[Any]


class BatchMessage(StreamMessage):
    """A message of a batch subscription: its members and the pending entries that hold
    them (one per member when read from topic streams, or the one private-stream entry)."""

    def __init__(
        self, message: dramatiq.Message[Any], queue: str, entries: list[tuple[str, bytes, int]],
        members: list[Member], counts: list[int],
    ) -> None:
        stream, sid, deliveries = entries[0]
        super().__init__(message, queue, stream, sid, deliveries)
        #: ``(stream, entry id, deliveries)`` of every entry this message acks.
        self.entries = entries
        self.members = members
        #: How often each member's entry was delivered.
        self.counts = counts
        #: Member indexes the handler failed on; None while it has not failed (or not run).
        self.failing: list[int] | None = None
        #: Members that could not be decoded: ``(index, error)``, dead-lettered at the end.
        self.dead: list[tuple[int, BaseException]] = []

    def fail_members(self, indexes: list[int]) -> None:
        """Record that the handler failed on these members: a retry copy carries only them."""
        self.failing = indexes
        self.args = ([self.members[i] for i in indexes],)


_local = threading.local()


def _loop() -> asyncio.AbstractEventLoop:
    """This worker thread's event loop for ``async def`` batch handlers."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def _raw(fields: dict[Any, bytes]) -> dict[bytes, bytes]:
    if all(isinstance(k, bytes) for k in fields):
        return fields
    return {k.encode() if isinstance(k, str) else k: v for k, v in fields.items()}


def members_of(
    args: tuple[Any, ...], options: dict[str, Any], stream: str, entry_id: str
) -> list[Member]:
    """The members a batch subscription's message carries: ``(members,)``, or one event
    ``(topic, fields)`` whose source is in its options (or is the entry itself)."""
    if len(args) == 2:
        topic, fields = args
        return [[topic, _raw(fields), options.get("src") or stream,
                 options.get("src_id") or entry_id]]
    return [[t, _raw(f), s, i] for t, f, s, i in args[0]]


def attempts_before(options: dict[str, Any]) -> int:
    """How often the events of a split part already ran before it (0 for other messages)."""
    value = options.get("batch_attempts", 0)
    return value if isinstance(value, int) and value > 0 else 0


def make_batch_runner(broker: StreamsBroker, sub: Subscription) -> Any:
    """The actor function of batch subscription ``sub``."""
    runner = BatchRunner(broker, sub)

    def run(*args: Any) -> None:
        runner.run(args)

    ident = sub.name.replace("-", "_").replace(".", "_")
    run.__name__ = run.__qualname__ = f"chi_batch_subscription_{ident}"
    run.__module__ = getattr(sub.handler, "__module__", __name__)
    return run


class BatchRunner:
    """The body of a batch subscription's actor (see the module docstring)."""

    def __init__(self, broker: StreamsBroker, sub: Subscription) -> None:
        self.codec, self.keys, self.client = broker.bus.codec, broker.keys, broker.client
        self.sub, self.opts = sub, sub.options

    def run(self, args: tuple[Any, ...]) -> None:
        msg = current_message()
        batch = msg if isinstance(msg, BatchMessage) else None
        if batch is not None:
            members, options = batch.members, batch.options
        else:  # called directly (tests, scripts): no stream context
            members, options = members_of(args, {}, "", ""), {}
        replay = bool(options.get("replay"))
        retries = options.get("retries", 0)
        attempt = attempts_before(options) + (retries if isinstance(retries, int) else 0) + 1
        events, index = self.decode(members, batch)
        seen = [self.keys.seen(self.sub.name, e.id) for e in events] if self.opts.dedupe else None
        if seen is not None and not replay and events:
            fresh = self.unseen(seen)
            events, index = [events[j] for j in fresh], [index[j] for j in fresh]
            seen = [seen[j] for j in fresh]
        if not events:
            return
        try:
            self.call(events, [members[i] for i in index], attempt, replay)
        except BatchFailed as exc:
            named = exc.failed_ids()
            failed = [j for j, e in enumerate(events) if e.id in named] or list(range(len(events)))
            if seen is not None:
                bad = set(failed)
                self.mark_seen([k for j, k in enumerate(seen) if j not in bad])
            if batch is not None:
                batch.fail_members([index[j] for j in failed])
            raise
        except BaseException:
            if batch is not None:
                batch.fail_members(index)
            raise
        if seen is not None:
            self.mark_seen(seen)

    def decode(
        self, members: list[Member], batch: BatchMessage | None
    ) -> tuple[list[Any], list[int]]:
        """The members' events and their indexes; one that does not decode is set aside on
        the batch (raised when there is no batch message)."""
        try:  # the whole batch in one pass; one by one when any member is not as expected
            return decode_members(self.codec, members), list(range(len(members)))
        except Exception:
            pass
        events: list[Any] = []
        index: list[int] = []
        decode = self.codec.decode
        for i, (topic, fields, src, src_id) in enumerate(members):
            try:
                events.append(decode(fields, topic=topic, stream=src, entry_id=src_id))
            except DecodeError as exc:
                if batch is None:
                    raise
                batch.dead.append((i, exc))
                continue
            index.append(i)
        return events, index

    def unseen(self, seen_keys: list[str]) -> list[int]:
        """Positions of the keys with no ``seen`` marker (events not handled yet)."""
        pipe = self.client.pipeline(transaction=False)
        for key in seen_keys:
            pipe.exists(key)
        return [j for j, found in enumerate(pipe.execute()) if not found]

    def call(self, events: list[Any], members: list[Member], attempt: int, replay: bool) -> None:
        """Run the handler on ``events`` (with their deliveries if it takes them)."""
        sub = self.sub
        if sub.wants_delivery:
            result = sub.handler(events, [
                Delivery(subscription=sub.name, attempt=attempt, stream=m[2], entry_id=m[3],
                         replay=replay or bool(e.metadata.get("chi_replay")))
                for e, m in zip(events, members, strict=True)
            ])
        else:
            result = sub.handler(events)
        if result is not None and inspect.isawaitable(result):
            _loop().run_until_complete(result)

    def mark_seen(self, seen_keys: list[str]) -> None:
        """Set the ``seen`` markers of events handled (``dedupe``)."""
        if not seen_keys:
            return
        pipe = self.client.pipeline(transaction=False)
        for key in seen_keys:
            pipe.set(key, b"1", px=self.opts.dedupe_ttl_ms)
        pipe.execute()
