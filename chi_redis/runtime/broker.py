"""``StreamsBroker``: a Dramatiq broker whose queues are Redis Streams consumer groups.

A subscription is a consumer group (named after it) on each topic stream it binds, plus a
private stream ``chi:q:{<sub>}`` for retries, redrives, targeted replays and plain tasks.
Dramatiq's own Worker, CLI and middleware (Retries, TimeLimit, AgeLimit, Callbacks,
Prometheus) run on it unchanged.  Delayed messages wait in a sorted set that a Lua script
promotes by the server's clock (no ``eta`` option, no ``.DQ`` queues).  Entries are acked
after the handler ran; acks are buffered per stream and flushed with the consumer's next
read (docs/design.md §5.2, §5.9); leases and XAUTOCLAIM recover what a dead
worker held.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dramatiq
import redis.exceptions as rex
from dramatiq.errors import ConnectionClosed

from ..backend.scripts import script
from ..events.names import validate_name
from ..limits import DAY_MS, MAX_COUNT, MAX_DLQ_LEN, check_limit
from .batch_consumer import BatchConsumer
from .batches import make_batch_runner
from .consumer import StreamMessage, StreamsConsumer
from .deadletters import DLQ_MAXLEN
from .encoder import MsgpackEncoder, encode_message
from .hooks import HookFilter, lighter
from .partitioned import PartitionedConsumer
from .partowners import is_part_stream
from .runner import ChiMiddleware, make_runner
from .subscriptions import Subscription, encode_record

if TYPE_CHECKING:
    from ..publish.bus import EventBus

__all__ = ["BrokerOptions", "StreamsBroker"]

logger = logging.getLogger(__name__)


@dataclass
class BrokerOptions:
    """Lease, reclaim and delivery settings (production defaults; tests use seconds)."""

    lease_ms: int = 60_000
    reclaim_interval_ms: int = 5_000
    max_deliveries: int = 5
    block_ms: int = 1_000
    prefetch: int | None = None  # None: the Worker's choice (2 per thread), adapted
    #: With ``prefetch`` unset, a queue whose handlers are fast may hold up to this many
    #: entries (about 10 ms of work per prefetch slot), so one read round trip feeds many
    #: messages; slow handlers keep the Worker's prefetch, so no worker hoards slow work.
    max_prefetch: int = 512
    dlq_maxlen: int = DLQ_MAXLEN
    registry_refresh_ms: int = 60_000
    #: Run a message on the consumer thread that read it when every worker thread is idle
    #: and the handler is fast (runtime/inline.py): no thread hand-off at low rates.
    inline_when_idle: bool = True

    def __post_init__(self) -> None:
        # Each sizes a Redis command (chi_redis.limits): BLOCK 0 would wait forever, a
        # MAXLEN of 0 keep no dead letter, a COUNT of millions stall the server.
        for name, hi in (("lease_ms", 7 * DAY_MS), ("reclaim_interval_ms", DAY_MS),
                         ("max_deliveries", 1_000_000), ("block_ms", 3_600_000),
                         ("max_prefetch", MAX_COUNT), ("dlq_maxlen", MAX_DLQ_LEN),
                         ("registry_refresh_ms", DAY_MS)):
            check_limit(getattr(self, name), name, 1, hi)
        if self.prefetch is not None:
            check_limit(self.prefetch, "prefetch", 1, MAX_COUNT)


@dataclass
class QueueState:
    """In-flight accounting and buffered acks of one queue, shared by its consumers.

    The Worker may replace a consumer object while messages are in flight, so this lives
    on the broker, keyed by queue, and acks need nothing but the message proxy.
    """

    cond: threading.Condition = field(default_factory=threading.Condition)
    inflight: dict[tuple[str, bytes], None] = field(default_factory=dict)
    acks: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))
    #: Deliveries finished since the last flush, by outcome (``ok``, ``retried``): counted
    #: under ``cond`` with the ack and added to ``chi_events_handled_total`` per flush.
    handled: dict[str, int] = field(default_factory=dict)
    #: Moving average of how long a message of this queue takes to process (seconds);
    #: 0.0 until the first one finished.  Sizes the adaptive prefetch window.
    avg_run_s: float = 0.0
    #: Dedupe claims of the runs in progress (key → token), refreshed with the leases.
    claims: dict[str, bytes] = field(default_factory=dict)
    #: Partition entries waiting out a retry's backoff: (due, monotonic s; the message).
    held: list[tuple[float, Any]] = field(default_factory=list)

    def observe_run(self, seconds: float) -> None:
        avg = self.avg_run_s
        self.avg_run_s = seconds if avg == 0.0 else avg * 0.9 + seconds * 0.1


class StreamsBroker(HookFilter):
    """A Dramatiq broker over Redis Streams, built around an :class:`~chi_redis.EventBus`.

    Creating it installs the msgspec encoder process-wide (``dramatiq.set_encoder``) and
    attaches it to the bus, which then declares its subscriptions as actors here.  Its
    middleware signals call only the middleware implementing them, and Dramatiq's Pipelines
    is replaced by an equivalent that returns at once outside a pipeline (:mod:`.hooks`).
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        middleware: list[Any] | None = None,
        options: BrokerOptions | None = None,
    ) -> None:
        super().__init__(middleware=middleware)
        self.middleware[:] = lighter(self.middleware)
        self.bus = bus
        self.keys = bus.keys
        self.options = options or BrokerOptions()
        self.queues: set[str] = set()
        self.subscriptions: dict[str, Subscription] = {}
        self.states: dict[str, QueueState] = defaultdict(QueueState)
        self.consumer_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._lock = threading.Lock()
        self._kept = 0
        self._kept_logged = 0.0
        self.add_middleware(ChiMiddleware())
        dramatiq.set_encoder(MsgpackEncoder())
        bus.attach(self)

    def __repr__(self) -> str:
        return f"StreamsBroker({self.bus!r})"

    # declaring ------------------------------------------------------------------------
    def declare_queue(self, queue_name: str) -> None:
        validate_name(queue_name, "queue")
        if queue_name in self.queues:
            return
        if self.bus.cluster_unknown:
            self.bus.adopt_cluster()
        self.emit_before("declare_queue", queue_name)
        self.ensure_group(self.keys.queue(queue_name), queue_name, "0")
        self.queues.add(queue_name)
        self.emit_after("declare_queue", queue_name)

    def declare_subscription(self, sub: Subscription) -> dramatiq.Actor[Any, Any]:
        """Declare ``sub`` as an actor (queue = actor name = subscription name)."""
        if self.bus.cluster_unknown:  # the first I/O of a bus built at import
            self.bus.adopt_cluster()
        with self._lock:
            if sub.name in self.subscriptions:
                raise ValueError(f"subscription {sub.name!r} is already declared")
            self.subscriptions[sub.name] = sub
        new = self.register(sub)
        for topic in sub.bound_topics(self._call(self.topics)):
            names = self._call(lambda t=topic: self.bus.partitions.names(t))
            if sub.batched and len(names) > 1:
                from ..errors import ConfigError

                raise ConfigError(f"batch subscription {sub.name!r} binds the partitioned topic"
                                  f" {topic!r}: batch subscriptions do not read partitions"
                                  " (docs/design.md §15.4); subscribe without batch_size")
            for name in names:
                self.ensure_group(self.keys.stream(name), sub.name, self._start_id(sub, new))
        o = sub.options
        actor_options: dict[str, Any] = {
            "max_retries": o.max_retries,
            "min_backoff": max(1, o.min_backoff_ms),
            "max_backoff": max(1, o.max_backoff_ms),
            "throws": (*_decode_errors(), *o.throws),
        }
        if o.time_limit_ms is not None:
            actor_options["time_limit"] = o.time_limit_ms
        run = make_batch_runner(self, sub) if sub.batched else make_runner(self, sub)
        return dramatiq.Actor(
            run, broker=self, actor_name=sub.name, queue_name=sub.name,
            priority=-sub.priority, options=actor_options,
        )

    def _start_id(self, sub: Subscription, first_time: bool) -> str:
        # docs/design.md §6: "new" only when the subscription first appears;
        # topics found later (wildcards) and groups re-created after NOGROUP start at the
        # first unhandled entry.
        if not first_time or sub.start == "earliest":
            return "0"
        if sub.start == "new":
            return "$"
        ms = int(sub.start.timestamp() * 1000)
        return f"{max(ms - 1, 0)}-18446744073709551615"

    def register(self, sub: Subscription) -> bool:
        """Record ``sub`` in the registry hash, seen now; True if it was not there before.

        Consumers call it again every ``registry_refresh_ms`` to keep ``last_seen_ms`` fresh.
        """
        entry = encode_record(sub.record(last_seen_ms=int(time.time() * 1000)))
        return bool(self._call(lambda: self.client.hset(self.keys.subs(), sub.name, entry)))

    def ensure_group(self, stream: str, group: str, start: str) -> bool:
        """Create ``group`` on ``stream`` (and the stream) if missing; True if created."""
        try:
            self.client.xgroup_create(stream, group, id=start, mkstream=True)
            return True
        except rex.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        except (rex.ConnectionError, rex.TimeoutError) as exc:
            raise self._closed(exc) from None

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except (rex.ConnectionError, rex.TimeoutError) as exc:
            raise self._closed(exc) from None

    def _closed(self, exc: Exception) -> ConnectionClosed:
        """Dramatiq's ConnectionClosed, saying what went wrong as chi-redis's errors do
        (``authentication failed at redis://…``, ``TLS: …``; never the password)."""
        from ..backend.connection import client_url, map_redis_error

        try:
            url, password = client_url(self.client)
        except Exception:  # a client without a connection pool's settings (fakeredis…)
            url, password = "", None
        return ConnectionClosed(map_redis_error(exc, url, password))  # type: ignore[no-untyped-call]

    def topics(self) -> list[str]:
        """Every topic published to so far (the registry set); raises redis-py errors."""
        members = self.client.smembers(self.keys.topics())
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    # Dramatiq's broker interface --------------------------------------------------------
    @property
    def client(self) -> Any:
        """The bus's client (a cluster client once the bus adopted one)."""
        return self.bus.client

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> StreamsConsumer:
        sub = self.subscriptions.get(queue_name)
        if sub is not None and sub.batched:  # docs/design.md §5.10
            return BatchConsumer(self, queue_name, self.options.prefetch or prefetch, timeout)
        if sub is not None and any(  # docs/design.md §15
                self._call(lambda t=t: self.bus.partitions.get(t))
                for t in sub.bound_topics(self._call(self.topics))):
            return PartitionedConsumer(self, queue_name, self.options.prefetch or prefetch,
                                       timeout)
        return StreamsConsumer(self, queue_name, self.options.prefetch or prefetch, timeout)

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        queue_name = message.queue_name
        self.declare_queue(queue_name)
        self.emit_before("enqueue", message, delay)
        if isinstance(message, StreamMessage) and is_part_stream(message.entry_stream):
            # A partition's entry: its retry holds the partition (docs/design.md §15.4).
            message.hold_ms = int(delay or 0)
            return message
        body = encode_message(message)
        try:
            if delay:
                s, delayed = script("delay"), self.keys.delayed(queue_name)
                self._call(lambda: s.run(self.client, [delayed], [int(delay), body]))
            else:
                self._call(lambda: self.client.xadd(self.keys.queue(queue_name), {"m": body}))
        except (ConnectionClosed, rex.RedisError) as exc:
            if not isinstance(message, StreamMessage):
                raise
            # Retries is re-enqueueing a message we delivered.  Its copy was not written
            # (Redis unreachable, or refusing: OOM, READONLY, NOPERM...), so keep the
            # original entry pending (not acked): the lease expires and it is reclaimed and
            # run again.  Nothing is lost, and nothing needs to be raised (Dramatiq would
            # log a traceback for every message in flight, and ack it).
            message.keep_pending = True
            self._kept_after_error(exc)
            return message
        self.emit_after("enqueue", message, delay)
        return message

    def _kept_after_error(self, exc: BaseException) -> None:
        """Log, at most every 10 s, that retries were left to the lease."""
        with self._lock:
            self._kept += 1
            now = time.monotonic()
            if now - self._kept_logged < 10:
                return
            count, self._kept, self._kept_logged = self._kept, 0, now
        logger.warning(
            "Redis unreachable or refusing writes (%s: %s): %d failed message(s) could not be"
            " scheduled for retry; their entries stay pending and are redelivered once the"
            " lease (%d ms) expires", type(exc).__name__, exc, count, self.options.lease_ms,
        )

    def get_declared_queues(self) -> set[str]:
        return set(self.queues)

    def get_declared_delay_queues(self) -> set[str]:
        return set()

    def streams_of(self, queue_name: str) -> list[str]:
        """Every stream the queue's group reads: its private stream, then bound topics."""
        streams = [self.keys.queue(queue_name)]
        sub = self.subscriptions.get(queue_name)
        if sub is not None:
            streams += [self.keys.stream(t) for t in sub.bound_topics(self.topics())]
        return streams

    def part_streams(self, queue_name: str) -> list[str]:
        """The partition streams of the partitioned topics the queue binds (§15)."""
        sub = self.subscriptions.get(queue_name)
        if sub is None:
            return []
        return [self.keys.stream(n) for t in sub.bound_topics(self.topics())
                for n in self.bus.partitions.names(t)[1:]]

    def flush(self, queue_name: str) -> None:
        """Drop everything waiting in the queue: its private stream, delayed set, and for a
        subscription everything unread or pending on its topic groups."""
        validate_name(queue_name, "queue")
        self.client.delete(self.keys.queue(queue_name), self.keys.delayed(queue_name))
        self.ensure_group(self.keys.queue(queue_name), queue_name, "0")
        for stream in self.streams_of(queue_name)[1:]:
            with contextlib.suppress(rex.ResponseError):
                self.client.xgroup_destroy(stream, queue_name)
            self.ensure_group(stream, queue_name, "$")
        state = self.states[queue_name]
        with state.cond:
            state.acks.clear()
            state.inflight.clear()

    def flush_all(self) -> None:
        for queue_name in list(self.queues):
            self.flush(queue_name)

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        """Wait until nothing is waiting, delayed or in flight on ``queue_name``.

        Raises :class:`dramatiq.errors.QueueJoinTimeout` after ``timeout`` ms.
        """
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while not self.is_idle(queue_name):
            if deadline is not None and time.monotonic() > deadline:
                raise dramatiq.errors.QueueJoinTimeout(queue_name)  # type: ignore[no-untyped-call]
            time.sleep(0.05)

    def is_idle(self, queue_name: str) -> bool:
        """True when the queue has no unread, pending, delayed or unflushed entries."""
        state = self.states[queue_name]
        with state.cond:
            if state.inflight or any(state.acks.values()):
                return False
        if self.client.zcard(self.keys.delayed(queue_name)):
            return False
        return all(group_idle(self.client, s, queue_name)
                   for s in self.streams_of(queue_name) + self.part_streams(queue_name))

    # acking (called from worker threads) ---------------------------------------------------
    def buffer_ack(
        self, queue_name: str, stream: str, entry_id: bytes, outcome: str | None = None
    ) -> None:
        """Record a finished entry; the queue's consumer flushes it with its next read
        (and counts ``outcome``, if given, in ``chi_events_handled_total`` then)."""
        state = self.states[queue_name]
        with state.cond:
            state.inflight.pop((stream, entry_id), None)
            state.acks[stream].append(entry_id)
            if outcome is not None:
                state.handled[outcome] = state.handled.get(outcome, 0) + 1
            state.cond.notify()

    def release(self, queue_name: str, stream: str, entry_id: bytes) -> None:
        """Forget an in-flight entry without acking it (it was handed back or dead-lettered)."""
        state = self.states[queue_name]
        with state.cond:
            state.inflight.pop((stream, entry_id), None)
            state.cond.notify_all()

    def close(self) -> None:
        self.client.close()


def group_idle(client: Any, stream: str, group: str) -> bool:
    """Whether ``group`` on ``stream`` has nothing pending and nothing unread."""
    try:
        groups = client.xinfo_groups(stream)
    except rex.ResponseError:
        return True  # no stream: nothing to read
    for g in groups:
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name != group:
            continue
        if g["pending"]:
            return False
        last = g["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else last
        return not client.xrange(stream, f"({last}", "+", count=1)
    # No group yet (a topic a wildcard subscription has not discovered yet, or a group lost
    # with Redis's state): it will be created at the first entry, so entries are waiting.
    return not client.xlen(stream)


def _decode_errors() -> tuple[type[BaseException], ...]:
    from ..errors import DecodeError

    return (DecodeError,)
