"""Buses over other brokers: ``bus.type: rabbitmq`` and ``bus.type: kafka``.

The same events (:class:`~chi_redis.Event`, the same codec and size limits), the same
handler API as :class:`~chi_redis.EventBus` (``@bus.subscribe(name, types=…, topics=…)``),
the same retry-with-backoff and dead-letter behaviour, over a broker other than Redis.
Queries and replay stay on the event store (Redis or the archive): a bridge only carries
events from publishers to handlers.

Each bridge module (``rabbitmq``, ``kafka``) implements :class:`Bus`; its client library is
an optional extra and is imported only when that bridge is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import ChiError
from ..events.event import Event

__all__ = ["Bus", "BusUnavailableError", "BusWorker", "NotSupportedError"]


class BusUnavailableError(ChiError):
    """The broker of a bridge cannot be reached (or refused a publish)."""


class NotSupportedError(ChiError):
    """Something the chosen bus cannot do (an option, a command); the message says what."""


class BusWorker(Protocol):
    """The consumers of a bus's subscriptions, run on threads of this process.

    ``start`` returns at once; ``stop`` lets handlers in flight finish (up to ``timeout_s``),
    leaves every unacknowledged event to be delivered again, and returns.
    """

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 30.0) -> None: ...


class Bus(Protocol):
    """What every bus offers publishers and handlers, whatever carries the events."""

    @property
    def namespace(self) -> str: ...

    def publish(self, event: Event, *, idempotency_key: str | None = None) -> str:
        """Publish ``event``; returns once the broker has it (durably, as it can), with an id."""
        ...

    def publish_batch(self, events: Sequence[Event]) -> list[str]:
        """Publish ``events`` in order; every one validated before any is sent."""
        ...

    def subscribe(self, name: str, **options: Any) -> Callable[[Callable[..., Any]],
                                                                 Callable[..., Any]]:
        """Register a handler as subscription ``name`` (options as EventBus.subscribe)."""
        ...

    def worker(self, *, threads: int = 4) -> BusWorker:
        """The consumers of every registered subscription."""
        ...

    def close(self) -> None: ...
