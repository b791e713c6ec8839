"""In-process workers: a bus's subscriptions on Dramatiq Worker threads beside the publisher.

With :meth:`EventBus.embedded() <chi_redis.EventBus.embedded>` this is the embedded bus:
publisher, workers and queries in one process and no server at all (single-process apps,
notebooks, tests)::

    bus = EventBus.embedded(namespace="app")

    @bus.subscribe("welcome-email", types=["user.created"])
    def welcome(event): ...

    with InProcessWorker(bus, threads=4) as worker:
        bus.publish(Event(type="user.created", data={"user_id": "u1"}))
        worker.drain(timeout_s=10)       # handled, or dead-lettered after its retries

It is the same :class:`~chi_redis.runtime.broker.StreamsBroker` and Dramatiq ``Worker``
that ``dramatiq chi_redis.worker`` runs, booted the way the dramatiq CLI boots them
(``process_boot`` first), so retries (with their backoff), dead letters, replay and stats
behave as on a server.  It works on a bus of a real Redis server too.

Latency: fakeredis's blocking ``XREADGROUP`` wakes up as soon as another thread writes, so
an event is picked up at once; idle consumers poll every ``worker_timeout_ms`` (250 ms by
default), which is also about how long :meth:`close` takes, and the most a retry waits
beyond its backoff.  Dramatiq's global broker is
set to this worker's broker while it runs (``set_global``) and put back by :meth:`close`
when nothing replaced it meanwhile; the msgspec encoder is process-wide and the same for
every broker, so several embedded buses may run side by side in one process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import dramatiq
import dramatiq.broker
from dramatiq.middleware import TimeLimit, default_middleware

from .errors import ChiError
from .runtime.broker import BrokerOptions, StreamsBroker

if TYPE_CHECKING:
    from types import TracebackType

    from .config import Config
    from .publish.bus import EventBus

__all__ = ["DrainTimeout", "InProcessWorker"]

logger = logging.getLogger(__name__)


class DrainTimeout(ChiError, TimeoutError):
    """Subscriptions still had work when :meth:`InProcessWorker.drain` gave up."""


class _ProcessTimeLimit(TimeLimit):
    """Dramatiq's TimeLimit, whose watchdog thread starts at the first boot only.

    TimeLimit starts a thread at ``process_boot`` that runs until the process exits (the
    dramatiq CLI boots once per process).  Every InProcessWorker boots its broker, so they
    all share one instance: one watchdog per process, however many workers come and go.
    """

    _lock = threading.Lock()
    _started = False

    def after_process_boot(self, broker: Any) -> None:
        with self._lock:
            if not self._started:
                super().after_process_boot(broker)  # type: ignore[no-untyped-call]
                type(self)._started = True


_time_limit: _ProcessTimeLimit | None = None


def _middleware() -> list[dramatiq.Middleware]:
    """Dramatiq's default middleware, with the process-wide TimeLimit."""
    global _time_limit
    with _ProcessTimeLimit._lock:
        if _time_limit is None:
            _time_limit = _ProcessTimeLimit()
    return [_time_limit if m is TimeLimit else m() for m in default_middleware]


class InProcessWorker:
    """A :class:`StreamsBroker` on ``bus`` and a Dramatiq ``Worker`` with ``threads`` threads.

    Creating it creates the broker, which declares every subscription registered on the
    bus so far (their consumer groups exist from then on; later ones are declared as they
    are registered).  :meth:`start` boots it and starts the threads, :meth:`close` stops and
    joins them; as a context manager it does both.  ``middleware`` is added to Dramatiq's
    default middleware; ``options`` are the broker's (production defaults when None).
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        threads: int = 4,
        options: BrokerOptions | None = None,
        middleware: Iterable[dramatiq.Middleware] = (),
        set_global: bool = True,
        worker_timeout_ms: int = 250,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.bus = bus
        self.threads = threads
        self.set_global = set_global
        self.worker_timeout_ms = worker_timeout_ms
        self.broker = StreamsBroker(bus, middleware=_middleware(), options=options)
        for m in middleware:
            self.broker.add_middleware(m)
        self.worker: dramatiq.Worker | None = None
        self._previous: dramatiq.Broker | None = None
        self._closed = False
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_config(cls, bus: EventBus, config: Config, **kwargs: Any) -> InProcessWorker:
        """A worker as the configuration says: ``bus.worker_count`` threads, the ``worker``
        section's lease, reclaim, delivery and prefetch settings (``kwargs`` win)."""
        from .config import broker_options_from_config

        kwargs.setdefault("threads", config.bus.worker_count)
        kwargs.setdefault("options", broker_options_from_config(config))
        return cls(bus, **kwargs)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.worker else "not started"
        return f"InProcessWorker({self.bus!r}, threads={self.threads}, {state})"

    # lifecycle ---------------------------------------------------------------------------------
    def start(self) -> InProcessWorker:
        """Boot the broker (``process_boot``, as the dramatiq CLI does) and start the threads."""
        if self._closed or self.worker is not None:
            raise RuntimeError("an InProcessWorker starts once")
        if self.set_global:
            self._previous = dramatiq.broker.global_broker
            dramatiq.set_broker(self.broker)
        self.broker.emit_after("process_boot")
        worker = dramatiq.Worker(
            self.broker, worker_threads=self.threads, worker_timeout=self.worker_timeout_ms
        )
        worker.start()
        self.worker = worker
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the Worker, wait up to ``timeout_s`` for its threads, detach from the bus.

        Messages read but not started are handed back (the next worker takes them at once);
        handlers running now finish first.  Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop(timeout=int(timeout_s * 1000))
            self._threads = [*worker.workers, *worker.consumers.values()]
            alive = self.alive_threads()
            if alive:
                logger.warning("threads still running after %.0f s: %s", timeout_s,
                               ", ".join(t.name for t in alive))
        if self.bus.broker is self.broker:
            # Later subscriptions must not be declared on a broker nobody consumes from.
            self.bus.broker = None
        if self.set_global and dramatiq.broker.global_broker is self.broker:
            setattr(dramatiq.broker, "global_broker", self._previous)  # noqa: B010

    def __enter__(self) -> InProcessWorker:
        return self.start() if self.worker is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def alive_threads(self) -> list[threading.Thread]:
        """The Worker's threads still alive after :meth:`close` (empty after a clean stop)."""
        return [t for t in self._threads if t.is_alive()]

    @property
    def running(self) -> bool:
        """Whether the threads were started and not stopped yet."""
        return self.worker is not None

    # waiting -----------------------------------------------------------------------------------
    def busy(self) -> list[str]:
        """The queues that still have work: unread, pending, delayed or in flight."""
        return [q for q in sorted(self.broker.get_declared_queues())
                if not self.broker.is_idle(q)]

    def drain(
        self, timeout_s: float = 60.0, *, check: Callable[[], None] | None = None
    ) -> None:
        """Wait until every subscription has nothing left to do.

        Every published event was handled or, after its retries (each after its backoff),
        dead-lettered: no group has unread or pending entries, no delayed retry waits, no
        message is in flight.  Two passes in a row must find every queue idle, so work a
        handler started on another queue during the first pass is seen.  ``check`` runs
        between passes (it may raise to stop waiting).  Raises :class:`DrainTimeout`
        naming the busy queues after ``timeout_s``.
        """
        if not self.running:
            raise RuntimeError("drain() needs a started InProcessWorker")
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while True:
            if check is not None:
                check()
            busy = self.busy()
            quiet = quiet + 1 if not busy else 0
            if quiet >= 2:
                return
            if time.monotonic() > deadline:
                raise DrainTimeout(
                    f"subscriptions still busy after {timeout_s:g} s: {', '.join(busy)}"
                )
            time.sleep(0.02)

