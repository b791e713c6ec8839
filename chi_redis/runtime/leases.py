"""Leases on the entries a consumer holds: refreshed while they run, reclaimed when idle,
and the buffered acks that end them.

An entry read by a consumer stays pending in its group until it is acked.  While a worker
runs it, its consumer keeps resetting the entry's idle time (``lease.lua``); an entry idle
past the lease belonged to a worker that died, hung up or handed it back, and any consumer
of the group takes it over (XAUTOCLAIM) with its delivery count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from ..backend.scripts import script
from ..backend.streamids import parse_id
from ..observe.logs import RateLimiter
from ..observe.metrics import counter, labelled

if TYPE_CHECKING:
    from .broker import QueueState

__all__ = ["ABANDONED", "ABANDON_IDLE_MS", "AckBuffer", "Leases"]

logger = logging.getLogger(__name__)

#: The placeholder consumer that entries handed back belong to until someone reclaims them.
ABANDONED = "chi-abandoned"
#: Idle time given to handed-back entries, so the next reclaim sweep takes them at once.
ABANDON_IDLE_MS = 10**12
_CHUNK = 500
_HANDLED = "chi_events_handled_total"
#: The reclaim log line of every subscription of this process (rate-limited like the
#: dead-letter line; the consumer's maintenance flushes the summary).
RECLAIM_LOG = RateLimiter(logger, "reclaims", burst=20, window_s=10.0)


def flush_log() -> None:
    """Log the "… N more reclaims" summary of a storm whose window has ended."""
    RECLAIM_LOG.flush()


class Leases:
    """Lease bookkeeping of consumer ``name`` in group ``group`` (one per consumer)."""

    def __init__(self, client: Any, group: str, name: str, lease_ms: int) -> None:
        self.client = client
        self.group = group
        self.name = name
        self.lease_ms = lease_ms
        self._lease = script("lease")
        self._delcons = script("delconsumer")
        # XAUTOCLAIM cursor per stream, followed across sweeps so that a long PEL of live
        # entries does not hide idle ones behind it.
        self._cursors: dict[str, str] = {}

    def refresh(self, held: Iterable[tuple[str, bytes]]) -> None:
        """Reset the idle time of the entries ``(stream, entry id)`` this consumer runs."""
        by_stream: dict[str, list[bytes]] = {}
        for stream, sid in held:
            by_stream.setdefault(stream, []).append(sid)
        for stream, ids in by_stream.items():
            for i in range(0, len(ids), _CHUNK):
                self._lease.run(self.client, [stream], [self.group, self.name,
                                                        *ids[i : i + _CHUNK]])

    def hand_back(self, entries: Iterable[tuple[str, bytes, int]]) -> None:
        """Give entries ``(stream, entry id, deliveries)`` to the placeholder consumer, marked
        long idle, with the delivery count set back (a hand-back is not a delivery)."""
        groups: dict[tuple[str, int], list[bytes]] = {}
        for stream, sid, deliveries in entries:
            groups.setdefault((stream, max(0, deliveries - 1)), []).append(sid)
        if not groups:
            return
        pipe = self.client.pipeline(transaction=False)
        for (stream, count), ids in groups.items():
            pipe.xclaim(stream, self.group, ABANDONED, 0, list(ids), idle=ABANDON_IDLE_MS,
                        retrycount=count, justid=True)
        for r in pipe.execute(raise_on_error=False):
            if isinstance(r, Exception):
                logger.warning("could not hand back entries of %s: %s", self.group, r)

    def claim_idle(
        self, stream: str, count: int, slack: int
    ) -> tuple[list[Any], dict[bytes, int]]:
        """Take over up to ``count`` entries of ``stream`` idle past the lease: the entries
        and how often each was delivered.  ``slack``: how many other entries this consumer
        may hold in that id range.  Raises ``redis.ResponseError`` (NOGROUP)."""
        start = self._cursors.get(stream, "0-0")
        res = self.client.xautoclaim(stream, self.group, self.name, self.lease_ms, start,
                                     count=count)
        self._cursors[stream] = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        claimed, deleted = res[1], (res[2] if len(res) > 2 else [])
        if deleted:
            counter("chi_trimmed_unprocessed_total").labels(self.group).inc(len(deleted))
            logger.warning(
                "%d pending entries of %s on %s were trimmed before they were processed",
                len(deleted), self.group, stream,
            )
        claimed = [c for c in claimed if c[1] is not None]
        if not claimed:
            return [], {}
        counter("chi_reclaimed_total").labels(self.group).inc(len(claimed))
        if RECLAIM_LOG.allow():
            logger.info(
                "reclaimed %d entries of %s on %s idle past the %d ms lease (their consumer"
                " died, hung or handed them back)", len(claimed), self.group, stream,
                self.lease_ms, extra={"subscription": self.group, "stream": stream,
                                      "count": len(claimed)},
            )
        ids = [c[0] for c in claimed]
        pending = self.client.xpending_range(
            stream, self.group, min=min(ids, key=parse_id), max=max(ids, key=parse_id),
            count=len(ids) + slack, consumername=self.name,
        )
        return claimed, {_bytes(p["message_id"]): int(p["times_delivered"]) for p in pending}

    def reset_cursors(self) -> None:
        """Start every stream's sweep from the first entry again (a group was re-created)."""
        self._cursors.clear()

    def reap(self, streams: Iterable[str]) -> None:
        """Remove other consumers with nothing pending that have been idle past the lease."""
        for stream in streams:
            try:
                consumers = self.client.xinfo_consumers(stream, self.group)
            except rex.ResponseError:
                continue
            for c in consumers:
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                if name != self.name and not c["pending"] and c["idle"] > self.lease_ms:
                    self._delcons.run(self.client, [stream], [self.group, name])

    def leave(self, stream: str) -> None:
        """Remove this consumer from ``stream``'s group (if it has nothing pending)."""
        self._delcons.run(self.client, [stream], [self.group, self.name])


class AckBuffer:
    """The acks of one queue that worker threads buffered (on the broker's ``QueueState``,
    which outlives consumer objects); the consumer sends them with its next round trip."""

    def __init__(self, state: QueueState, group: str, private: str) -> None:
        self.state = state
        self.group = group
        self.private = private

    def take(self) -> dict[str, list[bytes]]:
        """Every buffered ack, by stream, removed from the buffer (the outcomes counted with
        them go to ``chi_events_handled_total``)."""
        state = self.state
        with state.cond:
            handled = state.handled
            if handled:
                state.handled = {}
            if not any(state.acks.values()):
                acks: dict[str, list[bytes]] = {}
            else:
                acks = {s: ids for s, ids in state.acks.items() if ids}
                state.acks.clear()
        for outcome, n in handled.items():
            labelled(_HANDLED, self.group, outcome).inc(n)
        return acks

    def restore(self, acks: dict[str, list[bytes]]) -> None:
        """Put acks taken for a round trip that failed back in front of the buffer."""
        with self.state.cond:
            for s, ids in acks.items():
                self.state.acks[s][:0] = ids

    def flush(self, client: Any) -> None:
        """Send every buffered ack now (one pipeline); on a connection error they go back
        to the buffer and the error propagates."""
        acks = self.take()
        if not acks:
            return
        pipe = client.pipeline(transaction=False)
        self.queue(pipe, acks)
        try:
            self.check(pipe.execute(raise_on_error=False))
        except (rex.ConnectionError, rex.TimeoutError):
            self.restore(acks)
            raise

    def queue(self, pipe: Any, acks: dict[str, list[bytes]]) -> None:
        """Add the acks to ``pipe`` (private-stream entries are deleted too)."""
        for stream, ids in acks.items():
            pipe.xack(stream, self.group, *ids)
            if stream == self.private:
                pipe.xdel(stream, *ids)

    def check(self, results: list[Any]) -> None:
        """Log acks that failed (NOGROUP after a restart: those entries are gone)."""
        for r in results:
            if isinstance(r, Exception):
                logger.warning("ack failed on %s: %s", self.group, r)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
