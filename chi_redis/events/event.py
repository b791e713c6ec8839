"""The event envelope and typed business events.

An :class:`Event` is what services publish and handlers receive::

    @event_type("user.created")
    class UserCreated(msgspec.Struct):
        user_id: str
        email: str

    bus.publish(Event.of(UserCreated(user_id="u1", email="a@example.com")))

``data`` is any msgspec-encodable value.  When the event's type is registered with
:func:`event_type`, ``data`` decodes back to the registered Struct; otherwise it decodes to
plain Python values (dicts, lists, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import uuid_utils

from ..errors import ValidationError
from .names import default_topic, validate_name

__all__ = ["Event", "MetaValue", "event_type", "new_event_id", "registered_type"]

MetaValue = str | int | float | bool

T = TypeVar("T", bound=type[Any])


def new_event_id() -> str:
    """A new unique, time-ordered event id (UUIDv7 text)."""
    return str(uuid_utils.uuid7())


def _now() -> datetime:
    return datetime.now(UTC)


class Event(msgspec.Struct, kw_only=True, omit_defaults=False):
    """A domain event: what happened (``type``), where it is filed (``topic``) and its data.

    ``id`` is a UUIDv7 generated when not given; ``topic`` defaults to the first segment of
    ``type``; ``timestamp`` is the event time (timezone-aware, normalised to UTC);
    ``metadata`` maps string keys to str/int/float/bool values.
    """

    type: str = ""
    data: Any = None
    topic: str = ""
    id: str = msgspec.field(default_factory=new_event_id)
    metadata: dict[str, MetaValue] = msgspec.field(default_factory=dict)
    timestamp: datetime = msgspec.field(default_factory=_now)
    version: str = "1.0"

    def __post_init__(self) -> None:
        if not self.type:
            registered = _TYPES_BY_CLASS.get(type(self.data))
            if registered is None:
                raise ValidationError("event type is required", field="type")
            self.type, topic = registered
            if not self.topic:
                self.topic = topic
        validate_name(self.type, "type")
        if not self.topic:
            self.topic = _DEFAULT_TOPICS.get(self.type) or default_topic(self.type)
        else:
            validate_name(self.topic, "topic")
        if not isinstance(self.id, str) or not 0 < len(self.id) <= 128 or not self.id.isprintable():
            raise ValidationError(f"invalid event id {self.id!r}", field="id")
        ts = self.timestamp
        if not isinstance(ts, datetime):
            raise ValidationError("timestamp must be a datetime", field="timestamp")
        if ts.tzinfo is not UTC:
            offset = ts.utcoffset()
            if offset is None:
                raise ValidationError(
                    "timestamp must be timezone-aware (use datetime.now(UTC))", field="timestamp"
                )
            self.timestamp = ts.astimezone(UTC)
        if not isinstance(self.version, str) or not self.version:
            raise ValidationError("version must be a non-empty string", field="version")
        if not isinstance(self.metadata, dict):
            raise ValidationError("metadata must be a dict", field="metadata")
        for key, value in self.metadata.items():
            # Non-finite floats would be written as JSON null and make the entry undecodable.
            if (
                not isinstance(key, str)
                or not isinstance(value, str | int | float | bool)
                or (isinstance(value, float) and not math.isfinite(value))
            ):
                raise ValidationError(
                    f"metadata {key!r}: keys must be str and values str, int, finite float"
                    " or bool",
                    field="metadata",
                )

    @classmethod
    def of(cls, payload: Any, **fields: Any) -> Event:
        """Wrap a registered payload Struct, taking type and topic from its registration."""
        registered = _TYPES_BY_CLASS.get(type(payload))
        if registered is None:
            raise ValidationError(
                f"{type(payload).__name__} is not registered with @event_type", field="data"
            )
        fields.setdefault("type", registered[0])
        fields.setdefault("topic", registered[1])
        return cls(data=payload, **fields)

    @property
    def timestamp_us(self) -> int:
        """Event time in whole microseconds since the Unix epoch (the index score)."""
        return _to_us(self.timestamp)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_us(ts: datetime) -> int:
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# The registry of typed events.  It is module-level on purpose: a type tag means the same
# payload class in every bus and worker of a process, like msgspec's tagged unions.
_CLASSES_BY_TYPE: dict[str, type[Any]] = {}
_TYPES_BY_CLASS: dict[type[Any], tuple[str, str]] = {}
_DEFAULT_TOPICS: dict[str, str] = {}


def event_type(type_: str, *, topic: str | None = None) -> Callable[[T], T]:
    """Register a payload Struct under a type tag (and its default topic).

    Never change a tag once events carry it: stored events decode by it.
    """
    validate_name(type_, "type")
    if topic is not None:
        validate_name(topic, "topic")
    resolved_topic = topic or default_topic(type_)

    def register(cls: T) -> T:
        existing = _CLASSES_BY_TYPE.get(type_)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValidationError(
                f"type {type_!r} is already registered to {existing.__qualname__}", field="type"
            )
        _CLASSES_BY_TYPE[type_] = cls
        _TYPES_BY_CLASS[cls] = (type_, resolved_topic)
        _DEFAULT_TOPICS[type_] = resolved_topic
        return cls

    return register


def registered_type(type_: str) -> type[Any] | None:
    """The payload class registered under ``type_``, if any."""
    return _CLASSES_BY_TYPE.get(type_)
