"""What ``max_deliveries`` counts: handler starts, not deliveries (docs/design.md §5.5).

An entry's delivery count (the pending list's ``times_delivered``) rises whenever its
consumer dies holding it, whether or not its handler ran.  A worker killed by one event
(``os._exit``, a segfault, the OOM killer) takes every entry it had read ahead back to the
pending list, and each crash counts a delivery for all of them: counted that way, the
innocent entries read beside a poison one reach ``max_deliveries`` with it.

So an entry is dead-lettered with reason ``max_deliveries`` once its handler *started*
``max_deliveries`` times without finishing.  The first delivery of every entry is taken as
a start (recording it would cost a round trip per event); the starts of an entry delivered
again (count ≥ 2) are recorded in Redis by the worker thread just before it runs
(:func:`record_start`, key ``keys.starts``, with a TTL), and read by the reclaim sweep that
takes the entry over (:meth:`CrashGuard.sort`, one MGET per sweep).  An entry delivered
again runs alone in its queue (``StreamsConsumer._pop``), so no innocent entry runs, and
dies, beside one that crashes again; once it finishes it is acked at once rather than
buffered (:meth:`CrashGuard.ack_now`): the next crash cannot take it back.  (A worker user
needs ``INCRBY``, ``PEXPIRE`` and ``MGET`` on these keys: docs/security.md.)  As a last
resort against a loop that never reaches a handler, an entry delivered more than
:data:`HARD_CAP_FACTOR` times ``max_deliveries`` times is dead-lettered whatever its starts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from ..limits import DAY_MS
from ..observe.logs import RateLimiter
from ..observe.metrics import labelled

if TYPE_CHECKING:
    from .broker import StreamsBroker
    from .messages import StreamMessage

__all__ = ["HARD_CAP_FACTOR", "CrashGuard", "record_start", "starts_ttl_ms"]

logger = logging.getLogger(__name__)

#: An entry delivered more than this many times ``max_deliveries`` is dead-lettered even if
#: its handler never started: nothing loops for ever.
HARD_CAP_FACTOR = 4
_CONNECTION_ERRORS = (rex.ConnectionError, rex.TimeoutError)
_HANDLED = "chi_events_handled_total"
_LOG = RateLimiter(logger, "start records", burst=5, window_s=60.0)


def starts_ttl_ms(lease_ms: int) -> int:
    """How long a start count is kept: a day, or 100 leases if that is longer (a crash loop
    takes a lease per round); one that expires only restarts the count (the cap holds)."""
    return max(DAY_MS, 100 * lease_ms)


def record_start(broker: Any, message: Any) -> None:
    """Count a handler start for each entry of ``message`` delivered again (count ≥ 2);
    called in the worker thread just before the handler runs.  Never raises: a start that
    cannot be recorded is not counted (the hard cap still bounds the entry)."""
    entries = getattr(message, "entries", None) or [
        (message.entry_stream, message.entry_id, message.deliveries)]
    keys = [broker.keys.starts(message.entry_queue, stream, sid)
            for stream, sid, count in entries if count > 1]
    if not keys:
        return
    ttl = starts_ttl_ms(broker.options.lease_ms)
    pipe = broker.client.pipeline(transaction=False)
    for key in keys:
        pipe.incr(key)
        pipe.pexpire(key, ttl)
    try:
        pipe.execute()
    except rex.RedisError as exc:
        if _LOG.allow():
            logger.warning("could not record a handler start of %s (%s: %s): not counted"
                           " against max_deliveries", message.entry_queue,
                           type(exc).__name__, exc)


class CrashGuard:
    """The ``max_deliveries`` guard of one queue's consumer (docs/design.md §5.5)."""

    def __init__(self, broker: StreamsBroker, queue: str, max_deliveries: int) -> None:
        self.broker = broker
        self.client = broker.client
        self.keys = broker.keys
        self.queue = queue
        self.private = broker.keys.queue(queue)
        self.max_deliveries = max_deliveries
        self.cap = HARD_CAP_FACTOR * max_deliveries

    def exhausted(self, deliveries: int, starts: int) -> bool:
        """Whether an entry delivered ``deliveries`` times, whose handler started ``starts``
        times (its first delivery taken as one), goes to the dead letters."""
        return starts >= self.max_deliveries or deliveries > self.cap

    def sort(
        self, stream: str, claimed: list[Any], counts: dict[bytes, int]
    ) -> tuple[list[Any], list[tuple[bytes, dict[bytes, bytes], int]]]:
        """Entries a reclaim sweep took over: those to run, and ``(id, fields, deliveries)``
        of those to dead-letter.  One MGET of the start counts."""
        again = [sid for sid, fields in claimed if fields is not None and counts.get(sid, 1) > 1]
        if not again:
            return claimed, []
        recorded = self.client.mget([self.keys.starts(self.queue, stream, s) for s in again])
        starts = {sid: 1 + _int(n) for sid, n in zip(again, recorded, strict=True)}
        run: list[Any] = []
        doomed: list[tuple[bytes, dict[bytes, bytes], int]] = []
        for sid, fields in claimed:
            count = counts.get(sid, 1)
            if sid in starts and self.exhausted(count, starts[sid]):
                doomed.append((sid, fields, count))
            else:
                run.append((sid, fields))
        return run, doomed

    def ack_now(self, m: StreamMessage, outcome: str | None) -> bool:
        """Ack an entry delivered again that finished, now, so a crash of its worker by the
        next message cannot take it back (its start count, never read again, expires);
        False when Redis is unreachable (the caller buffers the ack as usual)."""
        stream, sid = m.entry_stream, m.entry_id
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(stream, self.queue, sid)
        if stream == self.private:
            pipe.xdel(stream, sid)
        try:
            results = pipe.execute(raise_on_error=False)
        except _CONNECTION_ERRORS:
            return False
        for r in results:
            if isinstance(r, Exception):
                logger.warning("ack failed on %s: %s", self.queue, r)
        self.broker.release(self.queue, stream, sid)
        if outcome is not None:
            labelled(_HANDLED, self.queue, outcome).inc()
        return True


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0
