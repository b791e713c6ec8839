"""Name rules for types, topics, subscriptions and namespaces, and type globs."""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import InvalidNameError

__all__ = [
    "NAME_PATTERN",
    "compile_glob",
    "default_topic",
    "glob_matches",
    "validate_glob",
    "validate_name",
]

#: One rule for every name that becomes part of a Redis key: lowercase ASCII letters, digits,
#: ``.``, ``_`` and ``-``, 1 to 128 characters, starting with a letter or digit.  No ``*``,
#: ``{``, ``}``, ``:`` or whitespace can appear, so names never break key layout or hash tags.
NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,127}"
_NAME = re.compile(NAME_PATTERN)
# A glob is a name in which whole dot-separated segments may be ``*`` or ``**``.
_GLOB_SEGMENT = re.compile(r"\*\*?|[a-z0-9_-]+")
_ONE = r"[^.]+"  # one segment: a name segment never holds a dot


_VALID: set[str] = set()  # names already checked (bounded): the hot path is a set lookup


def validate_name(value: object, field: str = "name") -> str:
    """Return ``value`` if it is a valid name, else raise :class:`InvalidNameError`."""
    if isinstance(value, str) and value in _VALID:  # (lists etc. are unhashable)
        return value
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise InvalidNameError(
            f"invalid {field} {_shown(value)}: must be 1-128 characters of lowercase letters,"
            " digits, '.', '_' or '-', starting with a letter or digit",
            field=field,
        )
    if len(_VALID) < 100_000:
        _VALID.add(value)
    return value


def _shown(value: object) -> str:
    """``repr(value)`` cut to 60 characters: a 1 MB name is not echoed back."""
    shown = repr(value) if not isinstance(value, str) else repr(value[:60])
    return shown if len(shown) <= 60 else shown[:57] + "..."


def default_topic(event_type: str) -> str:
    """The default topic of a type: its first segment (``user.created`` → ``user``)."""
    return event_type.split(".", 1)[0]


def validate_glob(pattern: object, field: str = "types") -> str:
    """Validate a type glob: dot-separated segments, each a name part, ``*`` or ``**``."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > 128:
        raise InvalidNameError(f"invalid {field} pattern {_shown(pattern)}", field=field)
    if "*" not in pattern:
        return validate_name(pattern, field)
    if not all(_GLOB_SEGMENT.fullmatch(seg) for seg in pattern.split(".")):
        raise InvalidNameError(
            f"invalid {field} pattern {_shown(pattern)}: '*' (one segment) and '**' (any number of"
            " segments) must stand for whole dot-separated segments (user.*, *.created, user.**)",
            field=field,
        )
    return pattern


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a type glob, segment by segment, like RabbitMQ's topic patterns.

    ``*`` matches exactly one segment and never crosses a dot (RabbitMQ's ``*``): ``user.*``
    matches ``user.created`` but not ``user.profile.updated``.  ``**`` matches zero or more
    segments (RabbitMQ's ``#``): ``user.**`` matches ``user``, ``user.created`` and
    ``user.profile.updated``; ``**`` alone matches every type.
    """
    validate_glob(pattern)
    segments: list[str] = []
    for seg in pattern.split("."):
        if not (seg == "**" and segments and segments[-1] == "**"):  # ``**.**`` is ``**``
            segments.append(seg)
    if segments == ["**"]:
        return re.compile(rf"{_ONE}(?:\.{_ONE})*")
    out = ""
    for i, seg in enumerate(segments):
        if seg == "**":
            # Zero or more segments, with the dot that joins them to their neighbour.
            out += rf"(?:{_ONE}\.)*" if i == 0 else rf"(?:\.{_ONE})*"
            continue
        piece = _ONE if seg == "*" else re.escape(seg)
        # After a leading ``**`` the dot is already part of its group.
        joined = i == 0 or (i == 1 and segments[0] == "**")
        out += piece if joined else rf"\.{piece}"
    return re.compile(out)


def glob_matches(pattern: str, event_type: str) -> bool:
    """Whether ``event_type`` matches the glob ``pattern``."""
    return compile_glob(pattern).fullmatch(event_type) is not None
