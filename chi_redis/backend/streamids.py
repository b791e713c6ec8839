"""Stream-id arithmetic: Redis stream ids (``ms-seq``) as sortable ``(ms, seq)`` tuples.

Redis compares ids numerically, part by part, which text comparison gets wrong
(``"9-0" > "10-0"``); every ordering, successor and range bound in the package goes
through these helpers so that only one place knows the format.
"""

from __future__ import annotations

__all__ = [
    "MAX_SEQ",
    "ON_TIME_AHEAD_MS",
    "ON_TIME_BEHIND_MS",
    "StreamId",
    "format_id",
    "parse_id",
    "pred",
    "succ",
]

#: The largest value of either part of a stream id (an unsigned 64-bit integer).
MAX_SEQ = 2**64 - 1
#: An event whose time is at most this many ms before its entry's append time (the stream
#: id's ms) or :data:`ON_TIME_AHEAD_MS` after it is "on time": found by event time through
#: the stream, by id range.  Any other event is "late" and also goes into the topic's time
#: index (``lua/publish.lua`` holds the same two numbers; docs/design.md §3.3).
ON_TIME_BEHIND_MS = 100
ON_TIME_AHEAD_MS = 50
#: A stream id as ``(milliseconds, sequence)``: tuples order the way Redis orders ids.
StreamId = tuple[int, int]


def parse_id(text: str | bytes) -> StreamId:
    """``b"1714564800000-3"`` → ``(1714564800000, 3)``; a bare ``ms`` means ``ms-0``."""
    if isinstance(text, bytes):  # int() reads ASCII digits from bytes: no decode needed
        raw_ms, _, raw_seq = text.partition(b"-")
        return int(raw_ms), int(raw_seq or 0)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(sid: StreamId) -> str:
    """``(ms, seq)`` → ``"ms-seq"``."""
    return f"{sid[0]}-{sid[1]}"


def succ(sid: StreamId) -> StreamId:
    """The smallest stream id after ``sid``."""
    return (sid[0] + 1, 0) if sid[1] >= MAX_SEQ else (sid[0], sid[1] + 1)


def pred(sid: StreamId) -> StreamId:
    """The largest stream id before ``sid`` (``0-0`` has none: returns ``0-0``)."""
    if sid[1] > 0:
        return sid[0], sid[1] - 1
    return (sid[0] - 1, MAX_SEQ) if sid[0] > 0 else (0, 0)
