"""Subscriptions: a named consumer group on the topics it binds, fed to a handler.

``@bus.subscribe("welcome-email", types=["user.created"])`` registers a handler.  The name
is the consumer group on every bound topic stream *and* the Dramatiq queue and actor name,
so renaming a subscription is a migration: the new name starts a new group.

Binding: ``topics=[...]`` binds exactly those topics.  Otherwise each type glob binds the
topic named by its first segment (``user.*`` and ``user.**`` → ``user``), and a glob whose
first segment is ``*`` or ``**`` (``*.created``, ``**``) binds every topic, including topics
that appear later.  ``types``,
``topics`` and ``filter`` combine with AND.  :func:`bound_topics` is that rule, for a live
:class:`Subscription` and for a :class:`SubscriptionRecord` read back from the registry.

Workers record each subscription in the registry hash (``keys.subs()``) as a
:class:`SubscriptionRecord` (JSON); operations read it back with :func:`decode_record`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec

from ..errors import ValidationError
from ..events.event import Event
from ..events.filters import EntryView, Filter, topic_is, type_is
from ..events.names import validate_glob, validate_name
from ..events.nesting import check_depth
from ..limits import MAX_TTL_MS, check_limit

__all__ = [
    "Delivery",
    "Handler",
    "Subscription",
    "SubscriptionOptions",
    "SubscriptionRecord",
    "bound_topics",
    "decode_record",
    "encode_record",
]

Handler = Callable[..., Any]
Start = Literal["new", "earliest"] | datetime

#: The largest ``batch_size`` a subscription may ask for (one Dramatiq message per batch).
MAX_BATCH_SIZE = 10_000
#: How long a batch waits for entries when ``batch_wait_ms`` is not given.
DEFAULT_BATCH_WAIT_MS = 100
#: The longest ``batch_wait_ms``.
MAX_BATCH_WAIT_MS = 60_000


def is_wildcard(topics: Sequence[str], types: Sequence[str]) -> bool:
    """Whether a binding reads every topic: no explicit topics and a type glob whose first
    segment is a wildcard (``*.created``, ``**``, ``**.created``)."""
    return not topics and any(t.split(".", 1)[0] in ("*", "**") for t in types)


def bound_topics(
    topics: Sequence[str], types: Sequence[str], known: Sequence[str] = (), *,
    wildcard: bool = False,
) -> list[str]:
    """The topics a subscription with this binding reads, given the topics known to exist.

    Explicit ``topics`` (in their order); else every known topic for a wildcard (sorted);
    else the first segment of each type glob (sorted).
    """
    if topics:
        return list(topics)
    if wildcard or is_wildcard(topics, types):
        return sorted(set(known))
    return sorted({t.split(".", 1)[0] for t in types})


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
    """Retry, lease and delivery settings of one subscription (defaults: docs/design.md §9.4)."""

    max_retries: int = 5
    min_backoff_ms: int = 1_000
    max_backoff_ms: int = 300_000
    max_deliveries: int | None = None  # None: the broker's default
    time_limit_ms: int | None = None
    dedupe: bool = False
    dedupe_ttl_ms: int = 24 * 3600 * 1000
    throws: tuple[type[BaseException], ...] = ()
    #: Batch subscriptions (docs/design.md §5.10): the handler gets ``list[Event]`` of up to
    #: ``batch_size`` events gathered within ``batch_wait_ms``; None: one event per call.
    batch_size: int | None = None
    batch_wait_ms: int | None = None  # None: DEFAULT_BATCH_WAIT_MS when batched

    @property
    def batch_wait(self) -> int:
        """How long (ms) a batch waits for more entries before it is delivered as it is."""
        return DEFAULT_BATCH_WAIT_MS if self.batch_wait_ms is None else self.batch_wait_ms

    def validate(self) -> None:
        for name in ("max_retries", "min_backoff_ms", "max_backoff_ms"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValidationError(f"{name} must be a non-negative integer", field=name)
        # The dedupe marker's TTL (SET PX): 0 is refused by Redis at the first success.
        check_limit(self.dedupe_ttl_ms, "dedupe_ttl_ms", 1, MAX_TTL_MS)
        if self.max_deliveries is not None and self.max_deliveries < 1:
            raise ValidationError("max_deliveries must be at least 1", field="max_deliveries")
        if self.time_limit_ms is not None and self.time_limit_ms <= 0:
            raise ValidationError("time_limit_ms must be positive", field="time_limit_ms")
        self._validate_batch()

    def _validate_batch(self) -> None:
        size, wait = self.batch_size, self.batch_wait_ms
        if size is not None and (
            not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BATCH_SIZE
        ):
            raise ValidationError(
                f"batch_size must be an integer from 1 to {MAX_BATCH_SIZE}, got {size!r}",
                field="batch_size",
            )
        if wait is None:
            return
        if size is None:
            raise ValidationError("batch_wait_ms needs batch_size", field="batch_wait_ms")
        if not isinstance(wait, int) or isinstance(wait, bool) or not (
            0 <= wait <= MAX_BATCH_WAIT_MS
        ):
            raise ValidationError(
                f"batch_wait_ms must be an integer from 0 to {MAX_BATCH_WAIT_MS}, got {wait!r}",
                field="batch_wait_ms",
            )


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
    def batched(self) -> bool:
        """Whether the handler receives batches (``batch_size`` set)."""
        return self.options.batch_size is not None

    @property
    def wildcard(self) -> bool:
        """Whether the subscription binds every topic (no explicit topics, a ``*.x`` or ``**``
        glob)."""
        return is_wildcard(self.topics, self.types)

    def bound_topics(self, known: Sequence[str] = ()) -> list[str]:
        """The topics this subscription reads, given the topics known to exist."""
        return bound_topics(self.topics, self.types, known)

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

    def record(self, last_seen_ms: int | None = None) -> SubscriptionRecord:
        """The registry record of this subscription, seen at ``last_seen_ms``."""
        start = self.start if isinstance(self.start, str) else self.start.isoformat()
        return SubscriptionRecord(
            name=self.name, types=self.types, topics=self.topics,
            filter=repr(self.filter) if self.filter is not None else None,
            priority=self.priority, wildcard=self.wildcard, start=start,
            max_retries=self.options.max_retries, max_deliveries=self.options.max_deliveries,
            dedupe=self.options.dedupe, last_seen_ms=last_seen_ms,
            batch_size=self.options.batch_size,
            batch_wait_ms=self.options.batch_wait if self.batched else None,
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-able description: the registry record's fields, without ``last_seen_ms``."""
        d = msgspec.structs.asdict(self.record())
        del d["last_seen_ms"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class SubscriptionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A subscription as a worker recorded it in the registry hash (JSON, one per name).

    The field names are those of the plain dicts earlier versions wrote (they had no
    ``name`` or ``start``), so records of either version read with :func:`decode_record`
    and earlier versions read these; fields this version does not know are ignored.
    """

    name: str = ""
    types: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    filter: str | None = None  # repr() of the filter, for people
    priority: int = 0
    wildcard: bool = False
    start: str | None = None  # "new", "earliest" or an ISO time; None: not recorded
    max_retries: int | None = None
    max_deliveries: int | None = None
    dedupe: bool = False
    last_seen_ms: int | None = None
    batch_size: int | None = None  # None: one event per handler call (and older records)
    batch_wait_ms: int | None = None

    def bound_topics(self, known: Sequence[str] = ()) -> list[str]:
        """The topics the subscription reads, given the topics known to exist."""
        return bound_topics(self.topics, self.types, known, wildcard=self.wildcard)


_RECORD = msgspec.json.Decoder(SubscriptionRecord)
_ANY = msgspec.json.Decoder()
_RECORD_FIELDS = SubscriptionRecord.__struct_fields__


def encode_record(record: SubscriptionRecord) -> bytes:
    """The registry hash value for ``record``."""
    return msgspec.json.encode(record)


def decode_record(name: str, raw: bytes | str | None) -> SubscriptionRecord:
    """The registry record stored under ``name``, read leniently.

    Records of earlier versions, and of later ones with extra fields, decode as they are.
    A field that does not fit (a hand-edited or foreign value) is dropped and the others
    kept; a value that is not a JSON object at all gives an empty record of that name.
    """
    if raw is None:
        return SubscriptionRecord(name=name)
    try:
        record = _RECORD.decode(raw)
    except msgspec.DecodeError:
        record = _salvage(raw)
    return record if record.name == name else msgspec.structs.replace(record, name=name)


def _salvage(raw: bytes | str) -> SubscriptionRecord:
    try:
        check_depth(b"js", raw if isinstance(raw, bytes) else raw.encode())
        value = _ANY.decode(raw)
    except msgspec.DecodeError:
        return SubscriptionRecord()
    if not isinstance(value, dict):
        return SubscriptionRecord()
    good: dict[str, Any] = {}
    for key in _RECORD_FIELDS:
        if key not in value:
            continue
        try:
            msgspec.convert({key: value[key]}, SubscriptionRecord)
        except msgspec.ValidationError:
            continue
        good[key] = value[key]
    return msgspec.convert(good, SubscriptionRecord)


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
