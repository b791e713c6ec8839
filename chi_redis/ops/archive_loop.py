"""``ArchiveLoop``: the archiver as one batch loop over the topic streams (no Dramatiq).

The loop reads the topic streams of consumer group ``chi-archive`` (the group the archiver
subscription uses, so both may run side by side) with one ``XREADGROUP … COUNT n BLOCK ms``,
decodes the entries, keeps those the archiver's ``types``/``topics`` select, stores them with
one ``store_many`` call (one commit) and only then acknowledges the batch.  The acks go out
pipelined in front of the next read, so a batch costs two round trips: one to Redis, one to
the store.

Crash safety (docs/design.md §14): an entry is acknowledged only after it is stored, and the
stores write an id they already hold once.  On start the loop first re-reads its own pending
entries (``XREADGROUP … 0``: what it read before a crash under the same consumer name), and
every ``lease_ms / 3`` it takes over (XAUTOCLAIM) entries of other consumers of the group idle
past the lease — a kill -9'd loop's batch, or a dead worker's messages.  An entry that does not
decode is dead-lettered (reason ``decode``, the subscription's dead-letter stream) and acked in
one script call; it never stops the loop.  A store error keeps the batch and retries it with a
backoff.  :meth:`ArchiveLoop.stop` (SIGTERM in ``chi-redis archive run``) lets the current
batch finish and be acknowledged, then the loop returns.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from ..backend.scripts import script
from ..errors import DecodeError
from ..events.event import Event
from ..events.filters import EntryView
from ..observe.metrics import counter
from ..runtime.deadletters import DLQ_MAXLEN, entry_dead_letter
from ..runtime.leases import Leases
from ..runtime.subscriptions import Subscription, encode_record
from .archive import ARCHIVE_SUBSCRIPTION

if TYPE_CHECKING:
    from ..publish.bus import EventBus
    from ..store import EventStore

__all__ = ["ArchiveLoop", "ArchiveStats"]

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS = (rex.ConnectionError, rex.TimeoutError)
#: An entry tuple as the loop handles it: (stream, entry id, fields).
Entry = tuple[str, bytes, dict[bytes, bytes]]


def _archive_noop(event: Event) -> None:
    """The handler of the loop's subscription record (the loop never calls it)."""


@dataclass
class ArchiveStats:
    """What one loop stored, skipped and dead-lettered so far."""

    read: int = 0
    stored: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    batches: int = 0


class ArchiveLoop:
    """Copies the events of the topic streams into ``store`` in ``store_many`` batches.

    ``batch_size``: entries read per stream per round trip; ``block_ms``: how long a read
    waits for new entries; ``consumer``: this loop's consumer name in the group (give a
    restarted loop the same name and it re-reads its own pending batch at once; otherwise
    that batch is taken over once idle past ``lease_ms``).
    """

    def __init__(
        self, bus: EventBus, store: EventStore, *, types: Sequence[str] = (),
        topics: Sequence[str] = (), batch_size: int = 500, block_ms: int = 1_000,
        lease_ms: int = 60_000, consumer: str | None = None, name: str = ARCHIVE_SUBSCRIPTION,
        refresh_ms: int = 5_000,
    ) -> None:
        self.bus = bus
        self.client = bus.client
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
        self.leases = Leases(self.client, name, self.consumer, lease_ms)
        self.stats = ArchiveStats()
        self._stop = threading.Event()
        self._streams: list[str] = []
        self._topic_of: dict[str, str] = {}
        self._acks: dict[str, list[bytes]] = {}
        self._deadletter = script("deadletter")
        self._next_refresh = 0.0
        self._next_reclaim = 0.0
        self._many: Any = getattr(store, "store_many", None)

    def __repr__(self) -> str:
        return f"ArchiveLoop({self.name!r}, consumer={self.consumer!r}, store={self.store!r})"

    # control ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to return after the batch in hand is stored and acknowledged."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self) -> ArchiveStats:
        """Archive until :meth:`stop`; returns what was stored.  Survives Redis outages
        and store errors (logged, retried with a backoff)."""
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
        return self.stats

    def start(self) -> None:
        """Create the groups, record the subscription, and store what a crash left: this
        consumer's own pending entries, then entries of dead consumers idle past the lease."""
        self.refresh()
        while not self._stop.is_set():
            own = self._read_pending()
            if not own:
                break
            self._archive(own)
            self._flush_acks()  # the next read from "0" must not return them again
        self.reclaim()

    def close(self) -> None:
        """Send outstanding acks and leave the group's consumer list (if nothing pending)."""
        try:
            self._flush_acks()
            for stream in self._streams:
                self.leases.leave(stream)
        except rex.RedisError as exc:
            logger.debug("archive loop closed without cleanup: %s", exc)

    # one round -------------------------------------------------------------------------------
    def step(self) -> int:
        """Read one batch (sending the previous batch's acks first), store it, queue its
        acks; returns how many entries it read."""
        now = time.monotonic()
        if now >= self._next_refresh:
            self.refresh()
        if now >= self._next_reclaim:
            self.reclaim()
        if not self._streams:
            self._flush_acks()
            self._stop.wait(min(self.block_ms, self.refresh_ms) / 1000)
            return 0
        entries = self._read_new()
        if entries:
            self._archive(entries)
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
                self._archive([(stream, sid, f) for sid, f in claimed])
                self._flush_acks()
        self.leases.reap(self._streams)
        self._next_reclaim = time.monotonic() + self.leases.lease_ms / 3000

    # reading ---------------------------------------------------------------------------------
    def _read_new(self) -> list[Entry]:
        pipe = self.client.pipeline(transaction=False)
        acks = self._queue_acks(pipe)
        pipe.xreadgroup(self.name, self.consumer, dict.fromkeys(self._streams, ">"),
                        count=self.batch_size, block=self.block_ms)
        try:
            *ack_results, read = pipe.execute(raise_on_error=False)
        except _CONNECTION_ERRORS:
            self._restore_acks(acks)
            raise
        self._check_acks(ack_results)
        return self._entries(read)

    def _read_pending(self) -> list[Entry]:
        read = self.client.xreadgroup(self.name, self.consumer,
                                      dict.fromkeys(self._streams, "0"), count=self.batch_size)
        # Each call restarts from "0": what the previous call returned was acked meanwhile.
        return self._entries(read)

    def _entries(self, read: Any) -> list[Entry]:
        if isinstance(read, Exception):
            if "NOGROUP" in str(read) or "no longer exists" in str(read):
                self._recover_groups()
                return []
            raise read
        out: list[Entry] = []
        for stream, entries in read or ():
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
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
        """Store the events of ``entries`` (retrying store errors until stopped), then
        queue every entry's ack."""
        events: list[Event] = []
        done: list[Entry] = []
        for entry in entries:
            stream, sid, f = entry
            if f is None:  # deleted from the stream while pending: nothing to store
                self._ack(stream, sid)
                continue
            event = self._decode(stream, sid, f)
            if event is not None:
                events.append(event)
            done.append(entry)
        self.stats.read += len(entries)
        if events and not self._store(events):
            return  # stopped while the store kept failing: the batch stays pending
        self.stats.stored += len(events)
        self.stats.batches += 1
        for stream, sid, _ in done:
            self._ack(stream, sid)

    def _decode(self, stream: str, sid: bytes, f: dict[bytes, bytes]) -> Event | None:
        topic = self._topic_of.get(stream) or self.keys.topic_from_stream(stream)
        try:
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

    def _store(self, events: list[Event]) -> bool:
        """Store ``events`` (one ``store_many`` call); False if stopped while failing."""
        backoff = 0.2
        while True:
            try:
                if self._many is not None:
                    self._many(events)
                else:
                    for e in events:
                        self.store.store(e)
                return True
            except Exception as exc:  # the store is down or refuses: keep the batch
                logger.warning("archive store %r failed (%s: %s); retrying %d events in %.1fs",
                               self.store, type(exc).__name__, exc, len(events), backoff)
                if self._stop.wait(backoff):
                    return False
                backoff = min(backoff * 2, 10.0)

    def _dead_letter(
        self, stream: str, sid: bytes, f: Any, topic: str, exc: BaseException
    ) -> None:
        """XACK the entry and XADD its dead letter in one script call (at most once)."""
        fields = entry_dead_letter(sub=self.name, stream=stream, sid=sid, fields=f,
                                   reason="decode", count=1, topic=topic, exc=exc)
        argv: list[Any] = [self.name, sid, "0", DLQ_MAXLEN]
        for k, v in fields.items():
            argv += (k, v)
        written = self._deadletter.run(self.client, [stream, self.keys.dlq(self.name)], argv)
        self.stats.dead_lettered += 1
        if written:
            counter("chi_dead_lettered_total").labels(self.name, "decode").inc()
        logger.warning("archive loop dead-lettered undecodable entry %s of %s: %s",
                       sid.decode(errors="replace"), stream, exc)

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
