"""Testing your handlers: run a bus's subscriptions in-process and wait until they are done.

Like Dramatiq's ``StubBroker`` + ``join()`` or FastStream's ``TestBroker``, but over the
real runtime on the embedded bus, so retries (with their backoff), filters, dedupe and dead
letters behave exactly as in production::

    from chi_redis import Event, EventBus
    from chi_redis.testing import running

    bus = EventBus.embedded()

    @bus.subscribe("welcome-email", types=["user.created"])
    def welcome(event): ...

    def test_welcome():
        with running(bus) as t:
            t.publish(Event(type="user.created", data={"email": "a@example.com"}))
            t.drain(raise_errors=True)     # every event handled (or dead-lettered)

Handler modules written for ``dramatiq chi_redis.worker my_handlers`` register on
``chi_redis.worker.bus``: ``running("my_handlers")`` imports ``chi_redis.worker`` with
``CHI_BUS_TYPE=memory`` (an embedded bus instead of a Redis connection), then the module,
and empties that bus's in-process server before each run, so every test starts from
nothing.  That works when ``chi_redis.worker`` was not imported yet in the test process, or
was imported with ``CHI_BUS_TYPE=memory`` (set it in ``conftest.py`` to be sure);
otherwise :func:`running` raises :class:`~chi_redis.ChiError` saying so.  Importing a
handler module registers its ``@event_type`` classes process-wide, as in the worker.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import dramatiq

from .backend.memory import is_embedded
from .embedded import DrainTimeout, InProcessWorker
from .errors import ChiError
from .runtime.broker import BrokerOptions

if TYPE_CHECKING:
    from .events.event import Event
    from .publish.bus import EventBus
    from .runtime.deadletters import DeadLetter

__all__ = ["TEST_OPTIONS", "DrainTimeout", "Failure", "Harness", "running"]

#: Broker options for tests: new topics (wildcard subscriptions) are found within 250 ms.
TEST_OPTIONS = BrokerOptions(reclaim_interval_ms=250)


@dataclass(frozen=True)
class Failure:
    """One handler call that raised: which subscription, which event, which attempt."""

    subscription: str
    message_id: str
    attempt: int
    exception: BaseException

    @property
    def event_id(self) -> str:
        """The event's id (a subscription's message id is ``<subscription>:<event id>``)."""
        prefix = f"{self.subscription}:"
        return self.message_id.removeprefix(prefix)


class _FailureRecorder(dramatiq.Middleware):
    """Records every exception a handler raised (before Retries decides what happens)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failures: list[Failure] = []

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if exception is None:
            return
        failure = Failure(message.queue_name, message.message_id,
                          message.options.get("retries", 0) + 1, exception)
        with self.lock:
            self.failures.append(failure)


class Harness:
    """What ``with running(...) as t`` gives: the bus, its worker, publishing and waiting."""

    def __init__(self, bus: EventBus, worker: InProcessWorker, recorder: _FailureRecorder):
        self.bus = bus
        self.worker = worker
        self._recorder = recorder
        self._reported = 0

    @property
    def store(self) -> Any:
        """The bus's event store (queries: ``load``, ``load_by_topic``, ...)."""
        return self.bus.store

    @property
    def failures(self) -> list[Failure]:
        """Every handler exception so far, oldest first (retried ones included)."""
        with self._recorder.lock:
            return list(self._recorder.failures)

    def publish(self, event: Event, *, idempotency_key: str | None = None) -> str:
        """Publish ``event`` on the bus; returns its stream id."""
        return self.bus.publish(event, idempotency_key=idempotency_key)

    def publish_batch(self, events: Sequence[Event]) -> list[str]:
        """Publish ``events`` in order; returns their stream ids."""
        return self.bus.publish_batch(events)

    def dead_letters(self, subscription: str) -> list[DeadLetter]:
        """The dead letters of ``subscription``, oldest first."""
        return self.bus.dead_letters(subscription)

    def drain(self, timeout: float = 30.0, *, raise_errors: bool = False) -> None:
        """Return once every published event was handled or dead-lettered.

        Nothing unread or pending on any group, no retry waiting in a delayed set, nothing
        in flight; retries wait for their backoff, so a handler that keeps failing is
        dead-lettered before this returns.  With ``raise_errors``, the first handler
        exception not raised by an earlier ``drain`` is re-raised as soon as it happens
        (a handler that failed once and succeeded on a retry still counts).  Raises
        :class:`DrainTimeout` after ``timeout`` seconds.
        """
        self.worker.drain(timeout, check=self._raise_first if raise_errors else None)
        if raise_errors:
            self._raise_first()

    def _raise_first(self) -> None:
        failures = self.failures
        if len(failures) > self._reported:
            first = failures[self._reported]
            self._reported = len(failures)
            raise first.exception


@contextlib.contextmanager
def running(
    target: EventBus | str | ModuleType | None = None,
    *,
    threads: int = 2,
    options: BrokerOptions | None = None,
) -> Iterator[Harness]:
    """Run the subscriptions of ``target`` on an in-process worker for the ``with`` block.

    ``target``: a bus (run as it is: nothing is deleted), a handler module or its import
    path (see the module docstring: its bus is emptied first), or None for a new
    :meth:`EventBus.embedded` bus.  ``options``: the broker's (:data:`TEST_OPTIONS` when
    None).  On exit the worker stops and every thread it started is joined.
    """
    if target is None:
        from .publish.bus import EventBus

        bus = EventBus.embedded()
    elif isinstance(target, str | ModuleType):
        bus = module_bus(target)
        bus.client.flushall()
    else:
        bus = target
    recorder = _FailureRecorder()
    worker = InProcessWorker(bus, threads=threads, options=options or TEST_OPTIONS,
                             middleware=[recorder])
    with worker:
        yield Harness(bus, worker, recorder)


def module_bus(module: str | ModuleType) -> EventBus:
    """Import a handler ``module`` on an embedded ``chi_redis.worker`` bus; that bus."""
    if "chi_redis.worker" not in sys.modules:
        previous = os.environ.get("CHI_BUS_TYPE")
        os.environ["CHI_BUS_TYPE"] = "memory"
        try:
            importlib.import_module("chi_redis.worker")
        finally:
            if previous is None:
                del os.environ["CHI_BUS_TYPE"]
            else:
                os.environ["CHI_BUS_TYPE"] = previous
    from . import worker

    if not is_embedded(worker.bus.client):
        raise ChiError(
            f"chi_redis.worker was imported with a bus on {worker.bus.url}: set"
            " CHI_BUS_TYPE=memory before it is imported (e.g. in conftest.py) to test"
            " handler modules in-process"
        )
    loaded = importlib.import_module(module) if isinstance(module, str) else module
    bus = getattr(loaded, "bus", worker.bus)
    if bus is not worker.bus and not is_embedded(bus.client):
        raise ChiError(f"{loaded.__name__}.bus is not an embedded bus: pass the bus instead")
    return bus
