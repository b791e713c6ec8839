"""The archive loop's store thread (docs/design.md §14).

:class:`StoreThread` stores one batch at a time with one ``store_many`` call in a thread of
its own, while the loop reads and decodes the next batch; a store error keeps the batch and
retries it with a backoff until the loop stops.  The loop acknowledges a batch's entries
only once :meth:`StoreThread.settle` says it is stored.

A poison event — one the store refuses for its data (``data_error`` on the exception, as
:class:`~chi_redis.store.postgres.DatabaseError` says of a ``\\u0000`` in JSONB) — would
fail its whole batch on every retry.  :func:`store_isolating` splits such a batch in halves
until the refused events stand alone, stores the rest, and hands the refused ones back to
be dead-lettered; any other error (the store is down) fails the call, to be retried whole.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..events.event import Event
    from ..store import EventStore

__all__ = ["ArchiveStats", "StoreThread", "refuses_data", "store_isolating"]

logger = logging.getLogger(__name__)

#: The events of a batch the store refused for their data: (index in the batch, error).
Refused = list[tuple[int, BaseException]]


@dataclass
class ArchiveStats:
    """What one loop stored, skipped and dead-lettered so far."""

    read: int = 0
    stored: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    batches: int = 0


def refuses_data(exc: BaseException) -> bool:
    """Whether ``exc`` says the store refused the events themselves (retrying cannot help)."""
    return bool(getattr(exc, "data_error", False))


def store_isolating(store: EventStore, events: list[Event]) -> list[tuple[int, BaseException]]:
    """Store ``events`` (``store_many`` when the store has it), isolating the events the
    store refuses for their data: returns their indexes in ``events`` with the error, all
    the others stored.  Raises what is not a data error (nothing is known stored then;
    the stores write an id they hold once, so the caller retries the whole list)."""
    many: Any = getattr(store, "store_many", None)
    try:
        if many is not None:
            many(events)
        else:
            for e in events:
                store.store(e)
        return []
    except Exception as exc:
        if not refuses_data(exc):
            raise
        if len(events) == 1:
            return [(0, exc)]
    mid = len(events) // 2
    head = store_isolating(store, events[:mid])
    return head + [(i + mid, e) for i, e in store_isolating(store, events[mid:])]


class StoreThread:
    """Stores batches of events in a thread of its own, one batch at a time.

    ``stop``: the loop's stop event (a failing batch is retried until it is set);
    ``stats``: ``stored`` and ``batches`` are counted here, once a batch is stored.
    """

    def __init__(self, store: EventStore, stop: threading.Event, stats: ArchiveStats,
                 name: str) -> None:
        self.store = store
        self.stats = stats
        self.name = name
        self._stop = stop
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: tuple[Future[Refused | None], list[Any]] | None = None

    @property
    def busy(self) -> bool:
        """Whether a batch is in the thread (stored or not yet: see :meth:`storing`)."""
        return self._inflight is not None

    @property
    def storing(self) -> bool:
        """Whether the batch in the thread is still being stored."""
        return self._inflight is not None and not self._inflight[0].done()

    def launch(self, events: list[Event], held: list[Any]) -> None:
        """Start storing ``events`` (nothing may be in the thread); ``held``: what
        :meth:`settle` hands back once they are stored."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-store")
        self._inflight = (self._pool.submit(self._store, events), held)

    def settle(self) -> tuple[list[Any], list[tuple[Any, BaseException]]]:
        """Wait for the batch in the thread: the ``held`` items of the events stored, and
        those of the events the store refused for their data, each with its error (to be
        dead-lettered); ``([], [])`` when none was in the thread or the loop stopped while
        its store kept failing."""
        if self._inflight is None:
            return [], []
        done, held = self._inflight
        self._inflight = None
        refused = done.result()
        if refused is None:
            return [], []
        if not refused:
            return held, []
        bad = dict(refused)
        return ([h for i, h in enumerate(held) if i not in bad],
                [(held[i], exc) for i, exc in refused])

    def close(self) -> None:
        """Wait for the batch in the thread and end the thread."""
        self.settle()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _store(self, events: list[Event]) -> Refused | None:
        """Store ``events`` (in the thread); the refused ones' indexes and errors, None if
        stopped while failing."""
        backoff = 0.2
        while True:
            try:
                refused = store_isolating(self.store, events)
                self.stats.stored += len(events) - len(refused)
                self.stats.batches += 1
                return refused
            except Exception as exc:  # the store is down: keep the batch
                logger.warning("archive store %r failed (%s: %s); retrying %d events in %.1fs",
                               self.store, type(exc).__name__, exc, len(events), backoff)
                if self._stop.wait(backoff):
                    return None
                backoff = min(backoff * 2, 10.0)
