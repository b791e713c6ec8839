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
from .names import _VALID as _VALID_NAMES
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
        # Runs for every event built: names already checked, a UTC timestamp and plain
        # metadata values take the short way; anything else gets the full check.
        type_ = self.type
        if not type_:
            registered = _TYPES_BY_CLASS.get(type(self.data))
            if registered is None:
                raise ValidationError("event type is required", field="type")
            self.type, topic = registered
            if not self.topic:
                self.topic = topic
            type_ = self.type
        if type(type_) is not str or type_ not in _VALID_NAMES:
            validate_name(type_, "type")
        topic = self.topic
        if not topic:
            default = _DEFAULT_TOPICS.get(type_) or _TOPIC_OF.get(type_)
            if default is None:
                if len(_TOPIC_OF) >= 4096:
                    _TOPIC_OF.clear()
                default = _TOPIC_OF[type_] = default_topic(type_)
            self.topic = default
        elif type(topic) is not str or topic not in _VALID_NAMES:
            validate_name(topic, "topic")
        id_ = self.id
        if not isinstance(id_, str) or not 0 < len(id_) <= 128 or not id_.isprintable():
            raise ValidationError(f"invalid event id {id_!r}", field="id")
        ts = self.timestamp
        if type(ts) is not datetime or ts.tzinfo is not UTC:
            self._check_timestamp(ts)
        version = self.version
        if not isinstance(version, str) or not version:
            raise ValidationError("version must be a non-empty string", field="version")
        metadata = self.metadata
        if not isinstance(metadata, dict):
            raise ValidationError("metadata must be a dict", field="metadata")
        for key, value in metadata.items():
            if type(key) is not str or type(value) not in _PLAIN_META:
                _check_meta(key, value)

    def _check_timestamp(self, ts: object) -> None:
        if not isinstance(ts, datetime):
            raise ValidationError("timestamp must be a datetime", field="timestamp")
        if ts.tzinfo is not UTC:
            offset = ts.utcoffset()
            if offset is None:
                raise ValidationError(
                    "timestamp must be timezone-aware (use datetime.now(UTC))", field="timestamp"
                )
            self.timestamp = ts.astimezone(UTC)

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
#: Metadata value types that need no further check (floats must be finite, and a subclass
#: of str or int may be anything).
_PLAIN_META = frozenset({str, int, bool})


def _check_meta(key: object, value: object) -> None:
    # Non-finite floats would be written as JSON null and make the entry undecodable.
    if (
        not isinstance(key, str)
        or not isinstance(value, str | int | float | bool)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise ValidationError(
            f"metadata {key!r}: keys must be str and values str, int, finite float or bool",
            field="metadata",
        )


def _to_us(ts: datetime) -> int:
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# The registry of typed events.  It is module-level on purpose: a type tag means the same
# payload class in every bus and worker of a process, like msgspec's tagged unions.
_CLASSES_BY_TYPE: dict[str, type[Any]] = {}
_TYPES_BY_CLASS: dict[type[Any], tuple[str, str]] = {}
_DEFAULT_TOPICS: dict[str, str] = {}
#: Default topics of unregistered types already seen (bounded).
_TOPIC_OF: dict[str, str] = {}


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
