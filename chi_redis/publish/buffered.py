"""A buffered background publisher for asyncio code.

``await publisher.publish(event)`` validates the event and puts it in a bounded buffer; a
background task writes the buffer in batches with :meth:`AsyncEventBus.publish_batch
<chi_redis.AsyncEventBus.publish_batch>`.  Nothing is dropped silently:

- a full buffer either blocks the caller (``on_full="block"``, up to ``block_timeout_s``)
  or raises :class:`~chi_redis.BufferFullError` at once (``on_full="raise"``);
- a batch that cannot be written is retried under the bus's :class:`~chi_redis.RetryPolicy`
  (inside ``publish_batch``), then the events that were not written are reported to
  ``on_error(events, exc)``, counted in ``failed_count`` and in the Prometheus counter
  ``chi_publish_failed_total``, and logged;
- on a bus with ``acks="replicas"``, events written but not confirmed by the replicas in
  time go to ``on_error(events, exc)`` too, with ``exc`` a
  :class:`~chi_redis.NotReplicatedError` (they are written: counted in
  ``unconfirmed_count``, not in ``failed_count``), and are logged.

``flush()`` waits until everything queued so far is written or reported; ``close()``
drains the buffer and stops the task (the bus stays open: its owner closes it)::

    async with BufferedPublisher(bus, on_error=report) as publisher:
        await publisher.publish(Event(type="user.created", data={...}))
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, Literal

from ..errors import (
    BufferFullError,
    ChiError,
    NotReplicatedError,
    PublishError,
    ValidationError,
)
from ..events.event import Event
from ..limits import MAX_CHUNK, check_limit
from ..observe.metrics import counter
from .aio import AsyncEventBus

__all__ = ["BufferedPublisher", "ErrorCallback", "OnFull"]

logger = logging.getLogger(__name__)

OnFull = Literal["block", "raise"]
#: ``on_error(events, exc)``: the events that were not written and the error that stopped
#: them.  May be a plain function or a coroutine function.
ErrorCallback = Callable[[list[Event], BaseException], Any]


class BufferedPublisher:
    """Publishes from a bounded in-memory buffer in background batches.

    Use from one event loop.  The background task starts with :meth:`start` (or
    ``async with``, or the first :meth:`publish`).  Events still buffered when the loop
    stops without :meth:`close` are lost: always close (or use ``async with``).
    """

    def __init__(
        self,
        bus: AsyncEventBus,
        *,
        max_buffer: int = 10_000,
        batch_size: int = 500,
        on_full: OnFull = "block",
        block_timeout_s: float = 5.0,
        on_error: ErrorCallback | None = None,
        flush_interval_ms: int = 5,
    ) -> None:
        check_limit(max_buffer, "max_buffer", 1, 10_000_000)
        check_limit(batch_size, "batch_size", 1, MAX_CHUNK)
        if on_full not in ("block", "raise"):
            raise ValidationError("on_full must be 'block' or 'raise'", field="on_full")
        if block_timeout_s < 0 or flush_interval_ms < 0:
            raise ValidationError("timeouts must not be negative", field="block_timeout_s")
        self.bus = bus
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.on_full = on_full
        self.block_timeout_s = block_timeout_s
        self.on_error = on_error
        self.flush_interval_ms = flush_interval_ms
        #: Events written, and events reported as failed, since the publisher was made.
        self.published_count = 0
        self.failed_count = 0
        #: Events written but not confirmed by the replicas (``acks="replicas"``).
        self.unconfirmed_count = 0
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=max_buffer)
        self._enqueued = 0  # events accepted by publish()
        self._settled = 0  # events written or reported, in queue order
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()  # cuts the linger short (full batch, flush, close)
        self._urgent = 0
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[Event] = []
        self._closed = False
        self._failed = counter("chi_publish_failed_total").labels(bus.namespace)

    def __repr__(self) -> str:
        return f"BufferedPublisher({self.bus!r}, pending={self.pending})"

    @property
    def pending(self) -> int:
        """Events accepted but not yet written or reported."""
        return self._enqueued - self._settled

    async def __aenter__(self) -> BufferedPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the background task (idempotent)."""
        if self._closed:
            raise ChiError("the publisher is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"chi-buffered-publisher-{self.bus.namespace}"
            )
            self._task.add_done_callback(self._on_task_done)

    async def publish(self, event: Event) -> None:
        """Validate ``event`` and queue it for the background task.

        Raises :class:`~chi_redis.ValidationError` for an invalid event (nothing queued),
        and :class:`~chi_redis.BufferFullError` when the buffer stays full (policy
        ``raise``: at once; ``block``: after ``block_timeout_s``).
        """
        if self._closed:
            raise ChiError("the publisher is closed")
        if not isinstance(event, Event):
            raise ValidationError(f"expected an Event, got {type(event).__name__}", field="event")
        self.bus.codec.encode_parts(event)  # size and encodability, checked before queueing
        if self._task is None:
            await self.start()
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            if self.on_full == "raise":
                raise BufferFullError(f"publish buffer full ({self.max_buffer} events)") from None
            try:
                await asyncio.wait_for(self._queue.put(event), self.block_timeout_s)
            except TimeoutError:
                raise BufferFullError(
                    f"publish buffer still full ({self.max_buffer} events) after"
                    f" {self.block_timeout_s} s"
                ) from None
        self._enqueued += 1
        if self._queue.qsize() >= self.batch_size:
            self._wakeup.set()

    async def flush(self) -> None:
        """Wait until every event queued so far is written or reported."""
        target = self._enqueued
        if self._settled >= target:
            return
        if self._task is None or self._task.done():
            raise ChiError("the background publisher is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        self._urgent += 1
        self._wakeup.set()
        try:
            await future
        finally:
            self._urgent -= 1

    async def close(self) -> None:
        """Refuse new events, write (or report) every buffered one, stop the task."""
        if self._closed and (self._task is None or self._task.done()):
            return
        self._closed = True
        task = self._task
        try:
            # Callers blocked in publish() when close began still get their events in.
            while (self.pending or not self._queue.empty()) and task and not task.done():
                await self.flush()
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._report_leftovers()

    async def _report_leftovers(self) -> None:
        """Report what the task left in the buffer (only if it stopped early)."""
        if self._inflight:  # cancelled half-way through a write: it may or may not be written
            inflight, self._inflight = self._inflight, []
            await self._report(inflight, ChiError("the publisher stopped while writing these"))
        left: list[Event] = []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        if left:
            await self._report(left, ChiError("the publisher stopped before writing these"))
        self._settle(self._enqueued - self._settled)

    # the background task -------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            batch = self._inflight = await self._next_batch()
            await self._write(batch)
            self._inflight = []
            self._settle(len(batch))

    async def _next_batch(self) -> list[Event]:
        first = await self._queue.get()
        linger = self.flush_interval_ms / 1000
        if linger and self._queue.qsize() + 1 < self.batch_size and not self._urgent:
            # Let a small batch fill up a little: fewer, larger round trips.
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), linger)
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    async def _write(self, batch: list[Event]) -> None:
        try:
            await self.bus.publish_batch(batch, chunk_size=self.batch_size)
        except PublishError as exc:
            self._count_published(len(exc.written))
            await self._report([batch[i] for i in exc.failed], exc.cause)
            if isinstance(exc, NotReplicatedError):
                await self._unconfirmed([batch[i] for i in exc.unconfirmed], exc)
        except ValidationError:  # an event changed after publish() checked it
            await self._write_each(batch)
        except Exception as exc:  # a bug or an unexpected error: report, never drop
            logger.exception("background publish of %d events failed", len(batch))
            await self._report(batch, exc)
        else:
            self._count_published(len(batch))

    async def _write_each(self, batch: list[Event]) -> None:
        for event in batch:
            try:
                await self.bus.publish_batch([event])
            except PublishError as exc:
                await self._report([event], exc.cause)
            except Exception as exc:
                await self._report([event], exc)
            else:
                self._count_published(1)

    def _count_published(self, n: int) -> None:
        # chi_events_published_total is counted by the write path (publish/writer.py).
        self.published_count += n

    async def _report(self, events: list[Event], exc: BaseException) -> None:
        if not events:
            return
        self.failed_count += len(events)
        self._failed.inc(len(events))
        logger.error(
            "could not publish %d events to namespace %r: %s",
            len(events),
            self.bus.namespace,
            exc,
        )
        await self._call_on_error(events, exc)

    async def _call_on_error(self, events: list[Event], exc: BaseException) -> None:
        if self.on_error is None:
            return
        try:
            result = self.on_error(events, exc)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_error callback failed")

    async def _unconfirmed(self, events: list[Event], exc: NotReplicatedError) -> None:
        self.unconfirmed_count += len(events)
        logger.warning("%d events published to namespace %r are not confirmed replicated: %s",
                       len(events), self.bus.namespace, exc)
        await self._call_on_error(events, exc)

    def _settle(self, n: int) -> None:
        self._settled += n
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if self._settled >= target:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((target, future))
        self._waiters = keep

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        error = ChiError("the background publisher stopped")
        if not task.cancelled() and task.exception() is not None:
            error = ChiError(f"the background publisher failed: {task.exception()!r}")
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(error)
        self._waiters = []
