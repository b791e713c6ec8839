"""Filters: which entries of a bound stream a subscription receives (the seed's filter engine).

Filters look only at the entry's routing fields — ``type``, the topic and the metadata —
never at the payload, so entries that do not match are acked without decoding ``data``::

    all_of(type_is("order.*"), metadata(region="eu"), not_(metadata(test=True)))
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from .names import compile_glob, validate_name
from .nesting import check_depth

__all__ = [
    "EntryView",
    "Filter",
    "all_of",
    "any_of",
    "metadata",
    "not_",
    "topic_is",
    "type_is",
]

_META = msgspec.json.Decoder(dict[str, Any])


class EntryView:
    """What a filter sees of one entry: type, topic, and metadata decoded on first use."""

    __slots__ = ("_meta", "_raw_meta", "topic", "type")

    def __init__(self, type_: str, topic: str, raw_meta: bytes = b"{}") -> None:
        self.type = type_
        self.topic = topic
        self._raw_meta = raw_meta
        self._meta: dict[str, Any] | None = None

    @property
    def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            try:
                raw = self._raw_meta
                check_depth(b"js", raw)
                self._meta = _META.decode(raw) if raw != b"{}" else {}
            except msgspec.DecodeError:
                self._meta = {}
        return self._meta


class Filter:
    """A predicate on :class:`EntryView`; combine with ``&``, ``|`` and ``~``."""

    def __init__(self, test: Callable[[EntryView], bool], description: str) -> None:
        self.test = test
        self.description = description

    def __call__(self, entry: EntryView) -> bool:
        return self.test(entry)

    def __repr__(self) -> str:
        return self.description

    def __and__(self, other: Filter) -> Filter:
        return all_of(self, other)

    def __or__(self, other: Filter) -> Filter:
        return any_of(self, other)

    def __invert__(self) -> Filter:
        return not_(self)


def type_is(*globs: str) -> Filter:
    """Types matching any of the globs (``*`` is one whole segment and never crosses a dot)."""
    patterns = [compile_glob(g) for g in globs]
    exact = {g for g in globs if "*" not in g}
    if len(exact) == len(globs):
        return Filter(lambda e: e.type in exact, f"type_is{tuple(globs)!r}")
    # One precompiled alternation: a single regex call per entry, whatever the glob count.
    match = re.compile("|".join(f"(?:{p.pattern})" for p in patterns)).fullmatch
    return Filter(lambda e: match(e.type) is not None, f"type_is{tuple(globs)!r}")


def topic_is(*topics: str) -> Filter:
    """Entries of any of these topics."""
    names = frozenset(validate_name(t, "topic") for t in topics)
    return Filter(lambda e: e.topic in names, f"topic_is{tuple(sorted(names))!r}")


def metadata(**equals: Any) -> Filter:
    """Entries whose metadata has every given key with exactly the given value."""
    items = tuple(equals.items())

    def test(e: EntryView) -> bool:
        meta = e.metadata
        return all(k in meta and meta[k] == v and type(meta[k]) is type(v) for k, v in items)

    return Filter(test, f"metadata({', '.join(f'{k}={v!r}' for k, v in items)})")


def all_of(*filters: Filter) -> Filter:
    """Entries every filter accepts."""
    return Filter(lambda e: all(f(e) for f in filters), f"all_of{filters!r}")


def any_of(*filters: Filter) -> Filter:
    """Entries at least one filter accepts."""
    return Filter(lambda e: any(f(e) for f in filters), f"any_of{filters!r}")


def not_(inner: Filter) -> Filter:
    """Entries the filter rejects."""
    return Filter(lambda e: not inner(e), f"not_({inner!r})")
