"""Argument checks and matching shared by every EventStore."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ..errors import ValidationError
from ..events.event import Event, _to_us
from ..events.names import compile_glob, validate_name

__all__ = ["check_range", "sort_key", "type_matcher"]


def check_range(start: datetime, end: datetime, limit: int | None) -> tuple[int, int]:
    """Validate a time range; returns it in microseconds since the epoch."""
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError(f"{name} must be a timezone-aware datetime", field=name)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValidationError("limit must be a non-negative integer or None", field="limit")
    return _to_us(start), _to_us(end)


def check_page(topic: str, offset: int, limit: int) -> None:
    """Validate ``load_by_topic`` arguments."""
    validate_name(topic, "topic")
    if not isinstance(offset, int) or offset < 0:
        raise ValidationError("offset must be a non-negative integer", field="offset")
    if not isinstance(limit, int) or limit < 0:
        raise ValidationError("limit must be a non-negative integer", field="limit")


def type_matcher(types: list[str] | None) -> Callable[[str], bool] | None:
    """A predicate on event types for a list of globs, or None for "all types"."""
    if types is None:
        return None
    if isinstance(types, str):
        types = [types]
    patterns = [compile_glob(t) for t in types]
    return lambda t: any(p.fullmatch(t) for p in patterns)


def sort_key(event: Event) -> tuple[datetime, str]:
    """The order of time-range results: event time, then event id.

    Event times are aware datetimes (normalised to UTC), so they compare exactly, to the
    microsecond, and much faster than converting each one to an integer first.
    """
    return (event.timestamp, event.id)
