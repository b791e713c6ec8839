"""Running a message on the consumer thread that read it, when every worker thread is idle.

Dramatiq hands each message from its queue's consumer thread to a worker thread through the
Worker's work queue: one more thread wake-up per message, and the consumer thread building
its next read beside the worker thread starting the handler (both want the GIL).  At a low
rate that hand-off is most of what a message waits between Redis and its handler
(docs/benchmarks.md, latency).  So a message runs where it was read when all of these hold,
checked for each message:

* the broker option ``inline_when_idle`` (config ``worker.inline_when_idle``) is on;
* the queue's handler is fast: its average run (``QueueState.avg_run_s``, measured by
  ``ChiMiddleware``) is known and at most ``INLINE_MAX_RUN_S`` — the consumer thread reads
  nothing while it runs a handler, so a slow one would hold back the next messages while
  worker threads sit idle;
* the message is all the queue has in flight, and the Worker's work queue is empty with no
  worker thread running a message (``unfinished_tasks == 0``);
* the Worker consumes this one queue, so no other consumer thread can feed the worker threads
  meanwhile: handlers still never run more than ``--threads`` at once;
* no middleware keeps per-thread state (``after_worker_thread_boot`` /
  ``before_worker_thread_shutdown``), which the consumer thread never ran.

It runs through Dramatiq's own ``WorkerThread.process_message``: the same middleware, time
limit, shutdown notice, retries, ack and nack.  It counts as a task of the work queue, so
``Worker.join`` waits for it.  While it runs, :class:`LeaseKeeper` refreshes its lease (the
consumer thread, which does that for messages on worker threads, is busy running it).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import dramatiq
from dramatiq.worker import WorkerThread

from .dedupe import refresh_claims

if TYPE_CHECKING:
    from .consumer import StreamMessage, StreamsConsumer

__all__ = ["INLINE_MAX_RUN_S", "Inline", "LeaseKeeper", "remember_worker"]

logger = logging.getLogger(__name__)

#: A queue whose handler runs longer than this on average hands its messages to worker
#: threads: an inline run holds back the next read for as long as it takes.
INLINE_MAX_RUN_S = 0.0005
_THREAD_HOOKS = ("after_worker_thread_boot", "before_worker_thread_shutdown")
#: work queue -> the Worker that owns it (set at worker boot, ChiMiddleware).
_workers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def remember_worker(worker: Any) -> None:
    """Note ``worker`` as the owner of its work queue (called at ``before_worker_boot``)."""
    queue = getattr(worker, "work_queue", None)
    if queue is not None:
        _workers[queue] = worker


def _keeps_thread_state(broker: Any) -> bool:
    base = dramatiq.Middleware
    return any(getattr(type(m), hook, None) is not getattr(base, hook)
               for m in broker.middleware for hook in _THREAD_HOOKS)


class _Shim:
    """What ``WorkerThread.process_message`` uses of its thread: broker, consumers, the work
    queue (for ``task_done``) and a logger (a failed inline run logs under this module)."""

    logger = logger

    def __init__(self, broker: Any, consumers: Any, work_queue: Any) -> None:
        self.broker, self.consumers, self.work_queue = broker, consumers, work_queue


class Inline:
    """One consumer's inline runs (:meth:`take` is called on its consumer thread)."""

    def __init__(self, consumer: StreamsConsumer) -> None:
        self.consumer = consumer
        self.enabled = consumer.opts.inline_when_idle
        self._hooks_checked = -1  # len(broker.middleware) when last checked
        self.runs = 0  #: messages run on the consumer thread so far

    def take(self, message: StreamMessage | None) -> StreamMessage | None:
        """Run ``message`` here and return None, or return it for Dramatiq's work queue."""
        if message is None or not self.enabled:
            return message
        c = self.consumer
        avg = c.state.avg_run_s
        if not 0.0 < avg <= INLINE_MAX_RUN_S or c._local or len(c.state.inflight) != 1:
            return message
        work: Any = getattr(threading.current_thread(), "work_queue", None)
        worker = _workers.get(work) if work is not None else None
        if worker is None or work.unfinished_tasks or len(worker.consumers) != 1:
            return message
        broker = c.broker
        if self._hooks_checked != len(broker.middleware):
            self._hooks_checked = len(broker.middleware)
            if _keeps_thread_state(broker):
                logger.info("queue %s: a middleware keeps per-thread state, so every message"
                            " runs on a worker thread", c.queue)
                self.enabled = False
                return message
        with work.mutex:  # a task of the work queue: Worker.join waits for it
            work.unfinished_tasks += 1
        KEEPER.begin(c)
        try:
            WorkerThread.process_message(_Shim(broker, worker.consumers, work), message)  # type: ignore[arg-type]
        finally:
            KEEPER.end()
        self.runs += 1
        return None


class LeaseKeeper:
    """One daemon thread per process, started at the first inline run: every tick it
    refreshes the lease (and dedupe claim) of each inline run going on for longer than a
    third of its lease, as the consumer thread does for messages on worker threads."""

    TICK_S = 0.25

    def __init__(self) -> None:
        self._runs: dict[int, tuple[Any, float]] = {}  # thread id -> (consumer, refreshed)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def begin(self, consumer: Any) -> None:
        self._runs[threading.get_ident()] = (consumer, time.monotonic())
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, daemon=True,
                                                    name="chi-inline-leases")
                    self._thread.start()

    def end(self) -> None:
        self._runs.pop(threading.get_ident(), None)

    def _loop(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            try:
                self.tick(time.monotonic())
            except Exception:  # never let the keeper die: log, retry next tick
                logger.exception("refreshing the lease of an inline run failed")

    def tick(self, now: float) -> int:
        """Refresh the runs due; how many were refreshed."""
        done = 0
        for ident, run in list(self._runs.items()):
            consumer, refreshed = run
            third = consumer.opts.lease_ms / 3000
            if now - refreshed < min(third, self.TICK_S * 4):
                continue
            consumer._refresh_leases()
            refresh_claims(consumer.client, consumer.state, consumer.opts.lease_ms)
            if self._runs.get(ident) is run:  # still the same run: note the refresh
                self._runs[ident] = (consumer, now)
            done += 1
        return done


KEEPER = LeaseKeeper()
