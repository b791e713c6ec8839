"""Reading a topic by event time: the stream by id range, merged with the late index.

An event whose time is close to its entry's append time (within
:data:`~chi_redis.backend.streamids.ON_TIME_BEHIND_MS` before,
:data:`~chi_redis.backend.streamids.ON_TIME_AHEAD_MS` after) is only in the stream: the
entries of event times ``[lo, hi]`` lie among the stream ids ``[lo - ahead, hi + behind]``
(in ms), read in pages and filtered on their ``ts`` field.  Every other ("late") event is
also in the topic's time index (docs/design.md §3.3), as is every event written before the
index held late events only, so both sources are read, side by side, and merged: an entry
found by both is returned once.

Pages come out in ``(event time, stream id bytes)`` order, the order of the index itself,
so a reader resumes after any ``(time, stream id)`` it returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from ..backend.streamids import (
    MAX_SEQ,
    ON_TIME_AHEAD_MS,
    ON_TIME_BEHIND_MS,
    StreamId,
    format_id,
    parse_id,
    succ,
)

__all__ = [
    "EventTimeReader",
    "FlatEntry",
    "entry_ts",
    "event_time_entries",
    "event_time_pages",
    "fetch_flat",
    "flat_view",
]

_NO_CAP: StreamId = (2**63, 0)


def _scored(reply: list[Any]) -> list[tuple[bytes, int]]:
    """A raw ``ZRANGEBYSCORE … WITHSCORES`` reply as ``(member, score µs)`` pairs: flat
    ``[member, score, ...]`` (RESP2; Redis prints whole doubles below 2**53 in full) or
    ``[member, score]`` pairs (RESP3)."""
    if reply and isinstance(reply[0], list | tuple):
        return [(m, int(float(sc))) for m, sc in reply]
    raw = reply[1::2]
    try:
        scores = list(map(int, raw))
    except ValueError:
        scores = [int(float(x)) for x in raw]
    return list(zip(reply[0::2], scores, strict=True))


def flat_view(client: Any) -> Any:
    """A client on ``client``'s connection pool whose XRANGE and ZRANGEBYSCORE replies stay
    as Redis sent them (flat lists), which is what :func:`event_time_pages` reads."""
    import redis

    from ..backend.cluster import ClusterFlatView, is_cluster

    if is_cluster(client):
        return ClusterFlatView(client)
    view = redis.Redis(connection_pool=client.connection_pool)
    view.set_response_callback("XRANGE", _identity)
    view.set_response_callback("ZRANGEBYSCORE", _identity)
    return view


def _identity(response: Any, **options: Any) -> Any:
    return response


#: One entry as ``(stream id, flat [field, value, ...] list, event time µs)``.
FlatEntry = tuple[bytes, list[bytes], int]


def entry_ts(flat: list[bytes]) -> int | None:
    """The ``ts`` field of a flat entry (µs), or None when it has none or a bad one."""
    if len(flat) > 5 and flat[4] == b"ts":
        raw: Any = flat[5]
    else:
        raw = dict(zip(flat[::2], flat[1::2], strict=False)).get(b"ts")
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def fetch_flat(raw: Any, stream: str, sids: Sequence[bytes]) -> dict[bytes, list[bytes]]:
    """The entries with these stream ids (missing ones left out), as flat lists.

    ``raw`` is a client whose XRANGE replies stay flat.  Index members mostly follow
    stream order, so one XRANGE over their span brings them all; the others are fetched
    one by one, pipelined.
    """
    return dict(_fetch(raw, stream, sids))


def _fetch(raw: Any, stream: str, sids: Sequence[bytes]) -> list[tuple[bytes, list[bytes]]]:
    """:func:`fetch_flat`'s entries as ``(stream id, flat)`` pairs, in no particular order
    (the usual span comes back as Redis sent it)."""
    if not sids:
        return []
    got: dict[bytes, list[bytes]] = {}
    first, last = parse_id(sids[0]), parse_id(sids[-1])
    if first <= last:  # usual: the span holds exactly these entries, in this order
        span: list[tuple[bytes, list[bytes]]] = raw.xrange(
            stream, sids[0], sids[-1], count=len(sids)
        )
        if list(map(itemgetter(0), span)) == list(sids):
            return span
    lo, hi = min(sids, key=parse_id), max(sids, key=parse_id)
    want = set(sids)
    for sid, flat in raw.xrange(stream, lo, hi, count=len(sids) * 2 + 16):
        if sid in want:
            got[sid] = flat
    rest = [s for s in sids if s not in got]
    if rest:
        pipe = raw.pipeline(transaction=False)
        for s in rest:
            pipe.xrange(stream, s, s)
        for found in pipe.execute():
            if found:
                got[found[0][0]] = found[0][1]
    return list(got.items())


def _in_range(items: list[Any], lo: int, hi: int) -> list[tuple[bytes, list[bytes]]]:
    """The stream entries whose ``ts`` is in ``[lo, hi]``; nothing else is decoded."""
    out = []
    for sid, flat in items:
        # The layout the publish scripts write has ts 3rd; any other goes the slow way.
        try:
            ts = int(flat[5]) if len(flat) > 5 and flat[4] == b"ts" else entry_ts(flat)
        except ValueError:  # not an event entry: never in an event-time range
            continue
        if ts is not None and lo <= ts <= hi:
            out.append((sid, flat))
    return out


def event_time_entries(
    raw: Any, stream: str, index: str, lo_us: int, hi_us: int, *, page: int = 5000
) -> list[tuple[bytes, list[bytes]]]:
    """Every entry of event time in ``[lo_us, hi_us]``, in no particular order (a caller
    that sorts anyway skips :class:`EventTimeReader`'s merge).

    The first page of each source comes in one pipelined round trip; index members are
    fetched as :func:`fetch_flat` does (members whose entry is gone are left out); an entry
    found by both sources is returned once, and only then is a set of ids built.
    """
    b_lo: StreamId = (max(lo_us // 1000 - ON_TIME_AHEAD_MS, 0), 0)
    b_hi: StreamId = (hi_us // 1000 + ON_TIME_BEHIND_MS, MAX_SEQ)
    pipe = raw.pipeline(transaction=False)
    pipe.execute_command("ZRANGEBYSCORE", index, lo_us, hi_us, "LIMIT", 0, page)
    pipe.xrange(stream, format_id(b_lo), format_id(b_hi), count=page)
    members, items = pipe.execute()
    found = _in_range(items, lo_us, hi_us)
    while len(items) == page:
        nxt = format_id(succ(parse_id(items[-1][0])))
        items = raw.xrange(stream, nxt, format_id(b_hi), count=page)
        found += _in_range(items, lo_us, hi_us)
    late: list[tuple[bytes, list[bytes]]] = []
    offset = 0
    while members:
        late += _fetch(raw, stream, members)
        if len(members) < page:
            break
        offset += page
        members = raw.execute_command(
            "ZRANGEBYSCORE", index, lo_us, hi_us, "LIMIT", offset, page
        )
    # Only members whose entry lies in the stream window can be in both.
    if found and late and any(b_lo <= parse_id(m) <= b_hi for m, _ in late):
        seen = {sid for sid, _ in found}
        late = [e for e in late if e[0] not in seen]
    return found + late


class EventTimeReader:
    """One reader of :func:`event_time_pages`: both sources and the buffer of entries read
    but not yet returned (those a source may still precede).

    Each :meth:`step` does its reads before it changes any state, so a step that failed
    (a connection error) can simply be called again.
    """

    def __init__(
        self, raw: Any, stream: str, index: str, lo_us: int, hi_us: int, *,
        cap: StreamId = (2**63, MAX_SEQ), after: tuple[int, bytes] | None = None,
        page: int = 1000, missing: Callable[[int], None] | None = None,
    ) -> None:
        self.raw, self.stream, self.index = raw, stream, index
        self.lo, self.hi, self.cap, self.page, self.missing = lo_us, hi_us, cap, page, missing
        start = lo_us if after is None else max(lo_us, after[0])
        self.last: tuple[int, bytes] | None = after
        self.buf: dict[bytes, tuple[int, list[bytes]]] = {}
        # the late index: next score, last member of that score returned, page size
        self.a_score, self.a_member = start, (after[1] if after else None)
        self.a_size, self.a_done, self.a_to = page, start > hi_us, start - 1
        # the stream: next id to read, last id; complete for event times <= b_to
        self.b_next: StreamId = (max(start // 1000 - ON_TIME_AHEAD_MS, 0), 0)
        self.b_end: StreamId = min(cap, (hi_us // 1000 + ON_TIME_BEHIND_MS, MAX_SEQ))
        self.b_done, self.b_to = start > hi_us or self.b_next > self.b_end, start - 1

    def read_index(self) -> None:
        size = self.a_size
        rows = _scored(self.raw.execute_command(
            "ZRANGEBYSCORE", self.index, self.a_score, self.hi, "WITHSCORES", "LIMIT", 0, size
        ))
        score, member = self.a_score, self.a_member
        fresh = rows
        if member is not None:
            fresh = [(m, s) for m, s in rows if s != score or m > member]
        wanted = fresh
        if self.cap < _NO_CAP:
            wanted = [(m, s) for m, s in fresh if parse_id(m) <= self.cap]
        found = fetch_flat(self.raw, self.stream, [m for m, _ in wanted])
        # Every read is done: the state changes only now, so a failed step can be retried.
        if not fresh:
            if len(rows) < size:
                self.a_done = True
            else:
                self.a_size *= 2  # a page full of ties already returned: widen it
            return
        self.a_size = self.page
        self.a_score, self.a_member = fresh[-1][1], fresh[-1][0]
        if self.missing is not None and len(found) < len(wanted):
            self.missing(len(wanted) - len(found))
        buf, last, get = self.buf, self.last, found.get
        for m, s in wanted:  # in [lo, hi] by the index's own bounds
            flat = get(m)
            if flat is not None and (last is None or (s, m) > last):
                buf.setdefault(m, (s, flat))
        if len(rows) < size:
            self.a_done = True
        else:
            self.a_to = self.a_score - 1

    def read_stream(self) -> None:
        items = self.raw.xrange(
            self.stream, format_id(self.b_next), format_id(self.b_end), count=self.page
        )
        buf, last, lo, hi = self.buf, self.last, self.lo, self.hi
        for sid, flat in items:
            # The layout the publish scripts write has ts 3rd; any other goes the slow way.
            try:
                ts = int(flat[5]) if len(flat) > 5 and flat[4] == b"ts" else entry_ts(flat)
            except ValueError:  # not an event entry: never in an event-time range
                ts = None
            if ts is not None and lo <= ts <= hi and (last is None or (ts, sid) > last):
                buf.setdefault(sid, (ts, flat))
        if len(items) < self.page:
            self.b_done = True
            return
        end = parse_id(items[-1][0])
        self.b_next = succ(end)
        # An unread on-time entry has an id after ``end``: its time is at least this.
        self.b_to = (end[0] - ON_TIME_BEHIND_MS) * 1000 - 1
        self.b_done = self.b_next > self.b_end

    def step(self) -> list[FlatEntry] | None:
        """Read one page from the source that lags; the entries now certain to come next
        (possibly none); None when both sources are exhausted and everything returned."""
        if self.a_done and self.b_done:
            return None
        if not self.a_done and (self.b_done or self.a_to <= self.b_to):
            self.read_index()
        else:
            self.read_stream()
        bound = min(self.hi if self.a_done else self.a_to, self.hi if self.b_done else self.b_to)
        ready = sorted((ts, sid) for sid, (ts, _) in self.buf.items() if ts <= bound)
        out = [(sid, self.buf.pop(sid)[1], ts) for ts, sid in ready]
        if out:
            self.last = (out[-1][2], out[-1][0])
        return out


def event_time_pages(
    raw: Any,
    stream: str,
    index: str,
    lo_us: int,
    hi_us: int,
    *,
    cap: StreamId = (2**63, MAX_SEQ),
    after: tuple[int, bytes] | None = None,
    page: int = 1000,
    missing: Callable[[int], None] | None = None,
) -> Iterator[list[FlatEntry]]:
    """Pages of a topic's entries whose event time is in ``[lo_us, hi_us]``, in
    ``(event time, stream id bytes)`` order, after the position ``after`` (exclusive).

    ``raw`` is a client from :func:`flat_view`.  Entries appended after
    ``cap`` are left out; index members whose entry is gone (trimmed by someone else) are
    reported to ``missing``.
    """
    merge = EventTimeReader(
        raw, stream, index, lo_us, hi_us, cap=cap, after=after, page=page, missing=missing
    )
    while True:
        out = merge.step()
        if out is None:
            return
        if out:
            yield out
