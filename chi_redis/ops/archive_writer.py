"""The archive loop's store thread (docs/design.md §14).

:class:`StoreThread` stores one batch at a time with one ``store_many`` call in a thread of
its own, while the loop reads and decodes the next batch; a store error keeps the batch and
retries it with a backoff until the loop stops.  The loop acknowledges a batch's entries
only once :meth:`StoreThread.settle` says it is stored.
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

__all__ = ["ArchiveStats", "StoreThread"]

logger = logging.getLogger(__name__)


@dataclass
class ArchiveStats:
    """What one loop stored, skipped and dead-lettered so far."""

    read: int = 0
    stored: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    batches: int = 0


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
        self._many: Any = getattr(store, "store_many", None)
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: tuple[Future[bool], list[Any]] | None = None

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

    def settle(self) -> list[Any]:
        """Wait for the batch in the thread: its ``held`` list once stored, ``[]`` when
        none was in the thread or the loop stopped while its store kept failing."""
        if self._inflight is None:
            return []
        done, held = self._inflight
        self._inflight = None
        return held if done.result() else []

    def close(self) -> None:
        """Wait for the batch in the thread and end the thread."""
        self.settle()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _store(self, events: list[Event]) -> bool:
        """Store ``events`` (in the thread); False if stopped while failing."""
        backoff = 0.2
        while True:
            try:
                if self._many is not None:
                    self._many(events)
                else:
                    for e in events:
                        self.store.store(e)
                self.stats.stored += len(events)
                self.stats.batches += 1
                return True
            except Exception as exc:  # the store is down or refuses: keep the batch
                logger.warning("archive store %r failed (%s: %s); retrying %d events in %.1fs",
                               self.store, type(exc).__name__, exc, len(events), backoff)
                if self._stop.wait(backoff):
                    return False
                backoff = min(backoff * 2, 10.0)
