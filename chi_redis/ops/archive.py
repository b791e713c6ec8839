"""The archiver: a built-in subscription that copies events into a persistent event store.

Redis keeps history only as long as retention allows (:mod:`chi_redis.ops.retention`); the
archiver copies every event (or those its ``types``/``topics`` select) into a
:class:`~chi_redis.store.postgres.PostgresEventStore` or
:class:`~chi_redis.store.files.FileEventStore`, so ``chi-redis replay --source archive`` can
deliver ranges Redis no longer holds.

Two ways to run it, on the same consumer group ``chi-archive`` (docs/design.md §14):

- ``chi-redis archive run`` runs :class:`~chi_redis.ops.archive_loop.ArchiveLoop`, one batch
  loop that reads the streams with ``XREADGROUP … COUNT n``, stores each batch with one
  ``store_many`` and acks it after; the fast path.
- A worker whose config says ``store.archive.enabled: true`` installs the archiver here,
  :func:`install_archiver`: an ordinary subscription (starting at the earliest entry), kept a
  subscription because it then shares the worker's leases, reclaim and shutdown.  A message
  is acknowledged only after its event is in the store, and the stores write an id they
  already hold once, so redeliveries after a worker crash or restart store nothing twice.
  Writes are batched: the worker threads hand their events to one writer thread, which
  stores whatever has gathered in one ``store_many`` call and then releases the threads (so
  a batch holds at most as many events as the worker has threads).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..events.event import Event
from .archive_writer import store_isolating

if TYPE_CHECKING:
    from ..publish.bus import EventBus
    from ..store import EventStore

__all__ = ["ARCHIVE_SUBSCRIPTION", "BatchWriter", "install_archiver"]

ARCHIVE_SUBSCRIPTION = "chi-archive"


class _Pending:
    __slots__ = ("done", "error", "event")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.done = threading.Event()
        self.error: BaseException | None = None


class BatchWriter:
    """Gathers events from many threads into ``store_many`` batches of up to ``batch_size``.

    :meth:`write` returns once the event is stored (or raises what the store raised), so
    the caller may acknowledge it.  Stores without ``store_many`` get one ``store`` call per
    event.  An event the store refuses for its data fails only its own ``write`` (the
    batch is split until it stands alone), never the events batched with it.
    """

    def __init__(self, store: EventStore, batch_size: int = 500) -> None:
        self.store = store
        self.batch_size = batch_size
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="chi-archive", daemon=True)
        self._thread.start()

    def write(self, event: Event, timeout_s: float = 300.0) -> None:
        """Store ``event`` in the next batch; returns when it is stored."""
        pending = _Pending(event)
        self._queue.put(pending)
        if not pending.done.wait(timeout_s):
            raise TimeoutError("the archive store did not answer in time")
        if pending.error is not None:
            raise pending.error

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                for i, exc in store_isolating(self.store, [p.event for p in batch]):
                    batch[i].error = exc  # refused for its data: its own handler fails
            except BaseException as exc:  # handed to every waiting thread
                for p in batch:
                    p.error = exc
            for p in batch:
                p.done.set()


def install_archiver(
    bus: EventBus, store: EventStore, *, types: Sequence[str] = (),
    topics: Sequence[str] = (), batch_size: int = 500, name: str = ARCHIVE_SUBSCRIPTION,
) -> BatchWriter:
    """Subscribe the archiver on ``bus``: every event its ``types``/``topics`` select (all,
    when both are empty) is copied into ``store``.  Returns its writer."""
    writer = BatchWriter(store, batch_size)

    def archive(event: Event) -> None:
        writer.write(event)

    bus.subscribe(name, types=list(types) or ["**"], topics=list(topics), start="earliest",
                  max_backoff_ms=30_000)(archive)
    return writer
