"""``ArchiveLoop``: the archiver as one batch loop over the topic streams (no Dramatiq).

The loop reads the topic streams of consumer group ``chi-archive`` (the group the archiver
subscription uses, so both may run side by side) with one ``XREADGROUP … COUNT n BLOCK ms``,
decodes the entries, keeps those the archiver's ``types``/``topics`` select and stores them
with one ``store_many`` call (one commit) in a store thread, and acknowledges a batch only
once it is stored.  Reading and storing overlap: while one batch is being stored, the loop
reads and decodes the next (each read carries the acks of the batches stored since the
last); when the store is slower than the reads, the loop reads on — up to ``GATHER``
reads' worth — and hands all it gathered to the store thread as one batch once the store
is free, so a lagging store gets fewer, larger commits.

Crash safety (docs/design.md §14): an entry is acknowledged only after it is stored, and the
stores write an id they already hold once.  On start the loop first re-reads its own pending
entries (``XREADGROUP … 0``: what it read before a crash under the same consumer name), and
every ``lease_ms / 3`` it takes over (XAUTOCLAIM) entries of other consumers of the group idle
past the lease — a kill -9'd loop's batches, or a dead worker's messages.  An entry that does
not decode is dead-lettered (reason ``decode``, the subscription's dead-letter stream) and
acked in one script call; it never stops the loop.  So is an event the store refuses for its
data (reason ``store``; the rest of its batch is stored).  Any other store error keeps the
batch and retries it with a backoff.  :meth:`ArchiveLoop.stop` (SIGTERM in
``chi-redis archive run``) lets the batches in hand be stored and acknowledged, then the loop
returns.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions as rex

from ..backend.cluster import group_by_slot, is_cluster, same_slot, split_dead_letter
from ..backend.scripts import script
from ..errors import DecodeError
from ..events.event import Event
from ..events.filters import EntryView
from ..observe.metrics import counter
from ..runtime.deadletters import DLQ_MAXLEN, entry_dead_letter
from ..runtime.leases import Leases
from ..runtime.slotreads import queue_reads
from ..runtime.subscriptions import Subscription, encode_record
from .archive import ARCHIVE_SUBSCRIPTION
from .archive_writer import ArchiveStats, StoreThread

if TYPE_CHECKING:
    from ..publish.bus import EventBus
    from ..store import EventStore

__all__ = ["ArchiveLoop", "ArchiveStats"]

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS = (rex.ConnectionError, rex.TimeoutError)
#: An entry tuple as the loop handles it: (stream, entry id, flat [name, value, …] fields or
#: None for an entry deleted while pending).
Entry = tuple[str, bytes, "list[bytes] | None"]
#: The field names of an entry as the publish script writes it, in order.
_PUBLISHED = [b"id", b"type", b"ts", b"ver", b"meta", b"enc", b"data"]
#: How many reads' worth of events the loop gathers for one store call while the store is busy.
GATHER = 4


def _identity(response: Any, **options: Any) -> Any:
    return response


def _archive_noop(event: Event) -> None:
    """The handler of the loop's subscription record (the loop never calls it)."""


class ArchiveLoop:
    """Copies the events of the topic streams into ``store`` in ``store_many`` batches.

    ``batch_size``: entries read per stream per round trip; ``block_ms``: how long a read
    waits for new entries; ``consumer``: this loop's consumer name in the group (give a
    restarted loop the same name and it re-reads its own pending batch at once; otherwise
    that batch is taken over once idle past ``lease_ms``).  ``switch_interval``: the
    interpreter's thread switch interval (``sys.setswitchinterval``) while :meth:`run` runs,
    None to leave it: the store thread, back from PostgreSQL, waits for the GIL while the
    loop decodes, up to the interval (5 ms by default) each time (docs/benchmarks.md).
    """

    def __init__(
        self, bus: EventBus, store: EventStore, *, types: Sequence[str] = (),
        topics: Sequence[str] = (), batch_size: int = 500, block_ms: int = 1_000,
        lease_ms: int = 60_000, consumer: str | None = None, name: str = ARCHIVE_SUBSCRIPTION,
        refresh_ms: int = 5_000, switch_interval: float | None = 0.001,
    ) -> None:
        self.bus = bus
        self.switch_interval = switch_interval
        self.client = bus.client
        # XREADGROUP replies kept as Redis sends them (flat field lists): redis-py's dict per
        # entry, and decoding from it, cost more than the rest of the read.  On a cluster
        # the reads go per slot through the cluster client (its dicts flattened again).
        self._cluster = is_cluster(self.client)
        if self._cluster:
            self._raw: Any = self.client
        else:
            self._raw = redis.Redis(connection_pool=self.client.connection_pool)
            self._raw.set_response_callback("XREADGROUP", _identity)
        self.keys = bus.keys
        self.codec = bus.codec
        self.store = store
        self.name = name
        self.batch_size = max(1, batch_size)
        self.block_ms = max(1, block_ms)
        self.refresh_ms = refresh_ms
        self.consumer = consumer or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        # The same binding install_archiver subscribes: its record goes into the registry,
        # so `chi-redis stats` and the lag gauges show this group like any subscription.
        self.sub = Subscription(name, _archive_noop, types=tuple(types) or ("**",),
                                topics=tuple(topics), start="earliest")
        self._everything = self.sub.types == ("**",) and not self.sub.topics
        self.leases = Leases(self.client, name, self.consumer, lease_ms)
        self.stats = ArchiveStats()
        self._stop = threading.Event()
        self._streams: list[str] = []
        self._topic_of: dict[str, str] = {}
        self._acks: dict[str, list[bytes]] = {}
        self._deadletter = script("deadletter")
        self._next_refresh = 0.0
        self._next_reclaim = 0.0
        self._writer = StoreThread(store, self._stop, self.stats, name)
        self._events: list[Event] = []  # decoded, not yet handed to the store thread
        self._held: list[Entry] = []  # their entries, acked once they are stored

    def __repr__(self) -> str:
        return f"ArchiveLoop({self.name!r}, consumer={self.consumer!r}, store={self.store!r})"

    # control ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to return after the batches in hand are stored and acknowledged."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self) -> ArchiveStats:
        """Archive until :meth:`stop`; returns what was stored.  Survives Redis outages
        and store errors (logged, retried with a backoff).  Sets the interpreter's thread
        switch interval to ``switch_interval`` meanwhile (see the class)."""
        previous = sys.getswitchinterval()
        if self.switch_interval:
            sys.setswitchinterval(self.switch_interval)
        try:
            self._run()
        finally:
            if self.switch_interval and sys.getswitchinterval() == self.switch_interval:
                sys.setswitchinterval(previous)
        return self.stats

    def _run(self) -> None:
        backoff = 0.1
        recovered = False
        while not self._stop.is_set():
            try:
                if not recovered:
                    self.start()
                    recovered = True
                self.step()
                backoff = 0.1
            except _CONNECTION_ERRORS as exc:
                recovered = False  # re-read what this consumer holds once Redis answers
                logger.warning("archive loop: Redis unreachable (%s); retrying in %.1fs",
                               exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.close()

    def start(self) -> None:
        """Create the groups, record the subscription, and store what a crash left: this
        consumer's own pending entries, then entries of dead consumers idle past the lease."""
        self._archive([])  # what was in hand when Redis went away
        self._flush_acks()
        self.refresh()
        while not self._stop.is_set():
            own = self._read_pending()
            if not own:
                break
            self._archive(own)
            self._flush_acks()  # the next read from "0" must not return them again
        self.reclaim()

    def close(self) -> None:
        """Wait for the batch being stored, send outstanding acks and leave the group's
        consumer list (if nothing pending)."""
        self._archive([])
        self._writer.close()
        try:
            self._flush_acks()
            for stream in self._streams:
                self.leases.leave(stream)
        except rex.RedisError as exc:
            logger.debug("archive loop closed without cleanup: %s", exc)

    # one round -------------------------------------------------------------------------------
    def step(self) -> int:
        """Read one batch (sending the queued acks first) and decode it; hand what was
        gathered to the store thread once the batch before is stored (queueing its acks) —
        at once if the store is free, else after reading on while it is busy; returns how
        many entries it read."""
        now = time.monotonic()
        if now >= self._next_refresh:
            self.refresh()
        if now >= self._next_reclaim:
            self.reclaim()
        if not self._streams:
            self._archive([])
            self._flush_acks()
            self._stop.wait(min(self.block_ms, self.refresh_ms) / 1000)
            return 0
        # While a batch is being stored, do not block: with nothing new, settle that one.
        entries = self._read_new(block=not self._writer.busy and not self._events)
        self._prepare(entries)
        if (entries and self._writer.storing
                and len(self._events) < GATHER * self.batch_size):
            return len(entries)  # the store is busy: read on, one store call for all
        self._settle()
        self._launch()
        return len(entries)

    def refresh(self) -> None:
        """Bind new topics (group created at the first entry) and refresh the record."""
        known = [m.decode() if isinstance(m, bytes) else str(m)
                 for m in self.client.smembers(self.keys.topics())]
        for topic in self.sub.bound_topics(sorted(known)):
            stream = self.keys.stream(topic)
            if stream not in self._topic_of:
                self._ensure_group(stream)
                self._topic_of[stream] = topic
        self._streams = list(self._topic_of)
        record = encode_record(self.sub.record(last_seen_ms=int(time.time() * 1000)))
        self.client.hset(self.keys.subs(), self.name, record)
        self._next_refresh = time.monotonic() + self.refresh_ms / 1000

    def reclaim(self) -> None:
        """Take over and store entries of other consumers idle past the lease."""
        for stream in self._streams:
            while not self._stop.is_set():
                try:
                    claimed, _ = self.leases.claim_idle(stream, self.batch_size, slack=0)
                except rex.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    self._recover_groups()
                    return
                if not claimed:
                    break
                self._archive([(stream, sid, [x for kv in f.items() for x in kv])
                               for sid, f in claimed])
                self._flush_acks()
        self.leases.reap(self._streams)
        self._next_reclaim = time.monotonic() + self.leases.lease_ms / 3000

    # reading ---------------------------------------------------------------------------------
    def _read_new(self, block: bool = True) -> list[Entry]:
        pipe = self._raw.pipeline(transaction=False)
        acks = self._queue_acks(pipe)
        reads = queue_reads(pipe, self.name, self.consumer, self._streams, self.batch_size,
                            self.block_ms if block else None)
        try:
            *ack_results, read = reads.execute(raise_on_error=False)
        except _CONNECTION_ERRORS:
            self._restore_acks(acks)
            raise
        self._check_acks(ack_results)
        return self._entries(read)

    def _read_pending(self) -> list[Entry]:
        # Each call restarts from "0": what the previous call returned was acked meanwhile.
        if not self._cluster:
            return self._entries(self._raw.xreadgroup(
                self.name, self.consumer, dict.fromkeys(self._streams, "0"),
                count=self.batch_size))
        out: list[Entry] = []
        for names in group_by_slot(self._streams):  # one slot per command on a cluster
            out += self._entries(self._raw.xreadgroup(
                self.name, self.consumer, dict.fromkeys(names, "0"), count=self.batch_size))
        return out

    def _entries(self, read: Any) -> list[Entry]:
        if isinstance(read, Exception):
            if "NOGROUP" in str(read) or "no longer exists" in str(read):
                self._recover_groups()
                return []
            raise read
        out: list[Entry] = []
        for stream, entries in (read.items() if isinstance(read, dict) else read or ()):
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            if self._cluster:  # redis-py's dict per entry, as the flat list Redis sent
                out.extend((name, sid, None if f is None else [x for kv in f.items() for x in kv])
                           for sid, f in entries)
            else:
                out.extend((name, sid, f) for sid, f in entries)
        return out

    def _ensure_group(self, stream: str) -> None:
        try:
            self.client.xgroup_create(stream, self.name, id="0", mkstream=True)
        except rex.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _recover_groups(self) -> None:
        logger.warning("consumer group %r missing (Redis restarted without persistence, or a"
                       " key was deleted): re-creating it at the first entry", self.name)
        for stream in self._streams:
            self._ensure_group(stream)
        self.leases.reset_cursors()
        self._stop.wait(0.05)  # never hot-loop on a server that keeps losing state

    # storing ---------------------------------------------------------------------------------
    def _archive(self, entries: list[Entry]) -> None:
        """Store what is in hand and the events of ``entries`` now (retrying store errors
        until stopped) and queue the acks (start-up, take-over, close)."""
        self._prepare(entries)
        self._settle()
        self._launch()
        self._settle()

    def _prepare(self, entries: list[Entry]) -> None:
        """Decode ``entries`` into the gathered events; an entry with nothing to store
        (deleted, filtered out, dead-lettered) has its ack queued at once."""
        events, held = self._events, self._held
        for entry in entries:
            stream, sid, f = entry
            event = None if f is None else self._decode(stream, sid, f)
            if event is None:  # f None: deleted from the stream while pending
                self._ack(stream, sid)
                continue
            events.append(event)
            held.append(entry)
        self.stats.read += len(entries)

    def _launch(self) -> None:
        """Hand the gathered events to the store thread (nothing may be in it)."""
        if self._events:
            self._writer.launch(self._events, self._held)
            self._events, self._held = [], []

    def _settle(self) -> None:
        """Wait for the batch in the store thread; queue its acks once it is stored, and
        dead-letter (and ack) the events the store refused for their data."""
        stored, refused = self._writer.settle()
        for stream, sid, _ in stored:
            self._ack(stream, sid)
        for (stream, sid, f), exc in refused:
            topic = self._topic_of.get(stream) or self.keys.topic_from_stream(stream)
            self._dead_letter(stream, sid, f, topic, exc, reason="store")

    def _decode(self, stream: str, sid: bytes, flat: list[bytes]) -> Event | None:
        topic = self._topic_of.get(stream) or self.keys.topic_from_stream(stream)
        f: Any = flat
        try:
            if self._everything and len(flat) == 14 and flat[0:13:2] == _PUBLISHED:
                # Published, not an archive write ("arc"), and every event is archived.
                return self.codec.decode_flat(flat, topic=topic, stream=stream,
                                              entry_id=sid.decode())
            f = dict(zip(flat[::2], flat[1::2], strict=True))
            if b"arc" in f or not self.sub.accepts(
                EntryView(f[b"type"].decode(errors="replace"), topic, f.get(b"meta", b"{}"))
            ):
                self.stats.skipped += 1
                return None
            return self.codec.decode(f, topic=topic, stream=stream, entry_id=sid.decode())
        except (DecodeError, KeyError, AttributeError, ValueError, TypeError) as exc:
            err = exc if isinstance(exc, DecodeError) else DecodeError(
                f"undecodable entry: {exc!r}", stream=stream, entry_id=sid.decode())
            self._dead_letter(stream, sid, f, topic, err)
            return None

    def _dead_letter(
        self, stream: str, sid: bytes, f: Any, topic: str, exc: BaseException,
        reason: str = "decode",
    ) -> None:
        """XACK the entry and XADD its dead letter in one script call (at most once)."""
        if isinstance(f, list) and len(f) % 2 == 0:
            f = dict(zip(f[::2], f[1::2], strict=True))
        fields = entry_dead_letter(sub=self.name, stream=stream, sid=sid, fields=f,
                                   reason=reason, count=1, topic=topic, exc=exc)
        argv: list[Any] = [self.name, sid, "0", DLQ_MAXLEN]
        for k, v in fields.items():
            argv += (k, v)
        dlq = self.keys.dlq(self.name)
        if self._cluster and not same_slot(stream, dlq):
            written = split_dead_letter(self.client, stream, dlq, argv)  # at least once
        else:
            written = self._deadletter.run(self.client, [stream, dlq], argv)
        self.stats.dead_lettered += 1
        if written:
            counter("chi_dead_lettered_total").labels(self.name, reason).inc()
        what = "undecodable entry" if reason == "decode" else "entry the store refuses"
        logger.warning("archive loop dead-lettered %s %s of %s: %s",
                       what, sid.decode(errors="replace"), stream, exc)

    # acks ------------------------------------------------------------------------------------
    def _ack(self, stream: str, sid: bytes) -> None:
        self._acks.setdefault(stream, []).append(sid)

    def _queue_acks(self, pipe: Any) -> dict[str, list[bytes]]:
        acks, self._acks = self._acks, {}
        for stream, ids in acks.items():
            pipe.xack(stream, self.name, *ids)
        return acks

    def _restore_acks(self, acks: dict[str, list[bytes]]) -> None:
        for stream, ids in acks.items():
            self._acks.setdefault(stream, []).extend(ids)

    def _check_acks(self, results: list[Any]) -> None:
        for r in results:
            if isinstance(r, Exception):
                # Left pending: stored already, so a redelivery stores nothing twice.
                logger.warning("archive loop: XACK failed (%s); entries stay pending", r)

    def _flush_acks(self) -> None:
        if not self._acks:
            return
        pipe = self.client.pipeline(transaction=False)
        acks = self._queue_acks(pipe)
        try:
            self._check_acks(pipe.execute(raise_on_error=False))
        except _CONNECTION_ERRORS:
            self._restore_acks(acks)
            raise
