"""Parsing the CLI's TIME, DUR and RATE arguments.

TIME is one of:

- ISO 8601: ``2024-05-01T12:00:00Z``, ``2024-05-01 12:00:00+02:00``, ``2024-05-01``
  (a naive time means UTC);
- a relative age: ``-15m``, ``-2h``, ``-7d`` (``now`` is accepted too);
- a stream id: ``1714564800000-0`` (or its bare millisecond part ``1714564800000``).

A :class:`TimePoint` keeps the parsed instant in microseconds and, when the user gave a
stream id, the exact id, so a range bound is as precise as what was typed.  Stream-id
arithmetic itself lives in :mod:`chi_redis.backend.streamids`.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import NamedTuple

from ..backend.streamids import MAX_SEQ, StreamId
from ..config import parse_duration_ms
from ..errors import ValidationError

__all__ = ["TimePoint", "parse_duration", "parse_rate", "parse_time"]

_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_MS = re.compile(r"\d{10,16}")
_REL = re.compile(r"-\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|m|min|h))?")
_HELP = (
    "use ISO 8601 (2024-05-01T12:00:00Z), a relative age (-15m, -2h, -7d)"
    " or a stream id (1714564800000-0)"
)


class TimePoint(NamedTuple):
    """A parsed TIME: an instant (µs since the epoch) and the exact stream id, if given."""

    us: int
    sid: StreamId | None = None

    @property
    def ms(self) -> int:
        return self.us // 1000

    def lower_id(self) -> StreamId:
        """The first stream id at or after this point (an inclusive lower bound)."""
        if self.sid is not None:
            return self.sid
        return (-(-self.us // 1000), 0)

    def upper_id(self) -> StreamId:
        """The last stream id at or before this point (an inclusive upper bound)."""
        if self.sid is not None:
            return self.sid
        return (self.us // 1000, MAX_SEQ)

    def lower_us(self) -> int:
        """The inclusive lower bound on event time (µs); a stream id covers its whole ms."""
        return self.sid[0] * 1000 if self.sid is not None else self.us

    def upper_us(self) -> int:
        """The inclusive upper bound on event time (µs)."""
        return self.sid[0] * 1000 + 999 if self.sid is not None else self.us

    def iso(self) -> str:
        """The instant as ISO 8601 UTC text."""
        return datetime.fromtimestamp(self.us / 1e6, UTC).isoformat().replace("+00:00", "Z")


def _now_us() -> int:
    return time.time_ns() // 1000


def parse_time(text: str, *, now_us: int | None = None, field: str = "time") -> TimePoint:
    """Parse a TIME argument; raises :class:`ValidationError` (exit code 1 in the CLI)."""
    s = text.strip()
    if not s:
        raise ValidationError(f"invalid {field} {text!r}: {_HELP}", field=field)
    if s.lower() == "now":
        return TimePoint(_now_us() if now_us is None else now_us)
    m = _ID.fullmatch(s)
    if m:
        sid = (int(m.group(1)), int(m.group(2)))
        if sid[1] > MAX_SEQ or sid[0] > MAX_SEQ:
            raise ValidationError(f"invalid {field} {text!r}: stream id out of range", field=field)
        return TimePoint(sid[0] * 1000, sid)
    if _MS.fullmatch(s):
        return TimePoint(int(s) * 1000, (int(s), 0))
    m = _REL.fullmatch(s)
    if m:
        try:
            age_ms = parse_duration_ms(m.group(1) + m.group(2))
        except ValidationError:
            raise ValidationError(f"invalid {field} {text!r}: {_HELP}", field=field) from None
        base = _now_us() if now_us is None else now_us
        return TimePoint(base - age_ms * 1000)
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValidationError(f"invalid {field} {text!r}: {_HELP}", field=field) from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return TimePoint((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def parse_duration(text: str, field: str = "duration") -> int:
    """A DUR argument (``30s``, ``15m``, ``7d``) in milliseconds."""
    try:
        ms = parse_duration_ms(text)
    except ValidationError:
        raise ValidationError(
            f"invalid {field} {text!r}: use e.g. 30s, 15m, 2h, 7d", field=field
        ) from None
    if ms <= 0:
        raise ValidationError(f"invalid {field} {text!r}: must be positive", field=field)
    return ms


def parse_rate(text: str) -> float:
    """``500``, ``500/s``, ``6000/m`` → events per second."""
    m = _RATE.fullmatch(text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ValidationError(f"invalid rate {text!r}: use e.g. 500/s or 6000/m", field="rate")
    per = {None: 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}[m.group(2)]
    return float(m.group(1)) / per
