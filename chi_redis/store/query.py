"""Argument checks and matching shared by every EventStore."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ..errors import ValidationError
from ..events.event import Event, _to_us
from ..events.names import compile_glob, validate_glob, validate_name

if TYPE_CHECKING:
    from .history import Fields, Item

__all__ = ["TypeFilter", "check_range", "sort_key", "type_matcher"]


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


class TypeFilter:
    """Tests a history entry's ``type`` field against globs, caching the answer per type.

    Each glob list is one condition (any glob of it matches); an entry passes when it meets
    every condition, e.g. replay's ``--types`` and the target subscription's own types.
    """

    def __init__(self, *glob_lists: Sequence[str]) -> None:
        self.lists = [[compile_glob(validate_glob(g)) for g in gl] for gl in glob_lists if gl]
        self._cache: dict[bytes, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.lists)

    def select(self, items: list[Item]) -> list[Item]:
        """The items whose type passes (the common all-pass batch costs one set)."""
        kinds = {it[2].get("type", b"") for it in items}
        passing = {k for k in kinds if self({"type": k})}
        if len(passing) == len(kinds):
            return items
        return [it for it in items if it[2].get("type", b"") in passing]

    def __call__(self, fields: Fields) -> bool:
        raw = fields.get("type", b"")
        ok = self._cache.get(raw)
        if ok is None:
            t = raw.decode(errors="replace")
            ok = self._cache[raw] = all(any(p.fullmatch(t) for p in pl) for pl in self.lists)
        return ok
