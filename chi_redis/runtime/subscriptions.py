"""Subscriptions: a named consumer group on the topics it binds, fed to a handler.

``@bus.subscribe("welcome-email", types=["user.created"])`` registers a handler.  The name
is the consumer group on every bound topic stream *and* the Dramatiq queue and actor name,
so renaming a subscription is a migration: the new name starts a new group.

Binding: ``topics=[...]`` binds exactly those topics.  Otherwise each type glob binds the
topic named by its first segment (``user.*`` → ``user``), and a glob whose first segment is
``*`` (``*.created``) binds every topic, including topics that appear later.  ``types``,
``topics`` and ``filter`` combine with AND.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ..errors import ValidationError
from ..events.event import Event
from ..events.filters import EntryView, Filter, topic_is, type_is
from ..events.names import validate_glob, validate_name

__all__ = ["Delivery", "Handler", "Subscription", "SubscriptionOptions"]

Handler = Callable[..., Any]
Start = Literal["new", "earliest"] | datetime


@dataclass(frozen=True)
class Delivery:
    """What a handler may ask about the delivery it runs for (its optional 2nd parameter)."""

    subscription: str
    attempt: int
    stream: str
    entry_id: str
    replay: bool = False


@dataclass
class SubscriptionOptions:
    """Retry, lease and delivery settings of one subscription (DESIGN §8 defaults)."""

    max_retries: int = 5
    min_backoff_ms: int = 1_000
    max_backoff_ms: int = 300_000
    max_deliveries: int | None = None  # None: the broker's default
    time_limit_ms: int | None = None
    dedupe: bool = False
    dedupe_ttl_ms: int = 24 * 3600 * 1000
    throws: tuple[type[BaseException], ...] = ()

    def validate(self) -> None:
        for name in ("max_retries", "min_backoff_ms", "max_backoff_ms", "dedupe_ttl_ms"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValidationError(f"{name} must be a non-negative integer", field=name)
        if self.max_deliveries is not None and self.max_deliveries < 1:
            raise ValidationError("max_deliveries must be at least 1", field="max_deliveries")
        if self.time_limit_ms is not None and self.time_limit_ms <= 0:
            raise ValidationError("time_limit_ms must be positive", field="time_limit_ms")


@dataclass
class Subscription:
    """A registered subscription: its binding, filter, priority, options and handler."""

    name: str
    handler: Handler
    types: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    filter: Filter | None = None
    priority: int = 0
    start: Start = "new"
    options: SubscriptionOptions = field(default_factory=SubscriptionOptions)
    wants_delivery: bool = False

    def __post_init__(self) -> None:
        validate_name(self.name, "subscription")
        self.types = tuple(validate_glob(t) for t in self.types)
        self.topics = tuple(validate_name(t, "topic") for t in self.topics)
        if not self.types and not self.topics:
            raise ValidationError(
                f"subscription {self.name!r} needs types=[...] or topics=[...]", field="types"
            )
        if not isinstance(self.priority, int):
            raise ValidationError("priority must be an integer", field="priority")
        if not (self.start in ("new", "earliest") or isinstance(self.start, datetime)):
            raise ValidationError("start must be 'new', 'earliest' or a datetime", field="start")
        if isinstance(self.start, datetime) and self.start.tzinfo is None:
            raise ValidationError("start must be timezone-aware", field="start")
        self.options.validate()
        self.wants_delivery = _takes_two(self.handler)
        parts: list[Filter] = []
        if self.types:
            parts.append(type_is(*self.types))
        if self.topics:
            parts.append(topic_is(*self.topics))
        if self.filter is not None:
            parts.append(self.filter)
        self._tests = parts

    @property
    def wildcard(self) -> bool:
        """Whether the subscription binds every topic (no explicit topics, a ``*.x`` glob)."""
        return not self.topics and any(t.split(".", 1)[0] == "*" for t in self.types)

    def bound_topics(self, known: Sequence[str] = ()) -> list[str]:
        """The topics this subscription reads, given the topics known to exist."""
        if self.topics:
            return list(self.topics)
        if self.wildcard:
            return sorted(set(known))
        return sorted({t.split(".", 1)[0] for t in self.types})

    def accepts(self, entry: EntryView) -> bool:
        """Whether an entry of a bound stream is delivered to the handler."""
        tests = self._tests
        if len(tests) == 1:
            return tests[0](entry)
        return all(t(entry) for t in tests)

    def call(self, event: Event, delivery: Delivery) -> Any:
        """Run the handler (sync; the caller awaits coroutines)."""
        if self.wants_delivery:
            return self.handler(event, delivery)
        return self.handler(event)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, as registered in Redis for the CLI."""
        return {
            "types": list(self.types),
            "topics": list(self.topics),
            "filter": repr(self.filter) if self.filter is not None else None,
            "priority": self.priority,
            "wildcard": self.wildcard,
            "max_retries": self.options.max_retries,
            "max_deliveries": self.options.max_deliveries,
            "dedupe": self.options.dedupe,
        }


def _takes_two(fn: Handler) -> bool:
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2
