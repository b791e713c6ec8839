"""Reading history: ranges of topic streams, by append time or by event time.

Two ways to ask for "what happened between t1 and t2" (DESIGN §4):

- by append time (``by="append"``): the stream ids themselves are server time in ms, so
  the range is an XRANGE, paged with an exclusive start (``(<last id>``);
- by event time (``by="event-time"``): the topic's time index (score = event time in µs),
  paged by a ``(score, member)`` cursor; the entries are then fetched from the stream.

Several topics are merged into one order (stream id, or event time).  Every reader is
resumable from a position (the last item it returned), which is what replay checkpoints.
:func:`envelope` turns an entry into the JSON envelope the CLI prints.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from typing import Any, Literal

import msgspec

from .codec import Codec
from .errors import DecodeError
from .keys import Keys
from .names import compile_glob, validate_glob
from .timeparse import MAX_SEQ, StreamId, format_id, parse_id, succ

__all__ = [
    "By",
    "Item",
    "TypeFilter",
    "envelope",
    "index_pages",
    "item_pos",
    "merged",
    "pos_key",
    "stream_pages",
]

By = Literal["append", "event-time"]
#: One entry read from history: topic, stream id, fields, event time (µs; 0 by append time).
Item = tuple[str, bytes, dict[bytes, bytes], int]
Fields = dict[bytes, bytes]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_META = msgspec.json.Decoder(dict[str, Any])
_MP = msgspec.msgpack.Decoder()
_JS = msgspec.json.Decoder()


def _sid_key(sid: bytes) -> StreamId:
    return parse_id(sid)


# positions ---------------------------------------------------------------------------------
def item_pos(item: Item, by: By) -> str:
    """The checkpoint position of an item: ``ms-seq`` (append) or ``score ms-seq``."""
    if by == "append":
        return item[1].decode()
    return f"{item[3]} {item[1].decode()}"


def pos_key(pos: str, by: By) -> tuple[Any, ...]:
    """A position as a sortable key, in the order the readers return items."""
    if by == "append":
        return parse_id(pos)
    score, _, member = pos.partition(" ")
    return int(score), member.encode()


# readers ---------------------------------------------------------------------------------
def stream_pages(
    client: Any,
    keys: Keys,
    topic: str,
    lo: StreamId,
    hi: StreamId,
    *,
    after: StreamId | None = None,
    page: int = 1000,
) -> Iterator[list[Item]]:
    """Pages of the topic's entries with ids in ``[lo, hi]`` (after ``after``, exclusive)."""
    stream = keys.stream(topic)
    first = succ(after) if after is not None and after >= lo else lo
    if first > hi:
        return
    # Inclusive starts at succ(last) rather than "(last": also valid for ms-<max seq>.
    start, end = format_id(first), format_id(hi)
    xrange = client.xrange
    while True:
        entries = xrange(stream, start, end, count=page)
        if not entries:
            return
        yield [(topic, sid, fields, 0) for sid, fields in entries]
        if len(entries) < page:
            return
        start = format_id(succ(parse_id(entries[-1][0])))


def index_pages(
    client: Any,
    keys: Keys,
    topic: str,
    lo_us: int,
    hi_us: int,
    *,
    cap: StreamId = (2**63, MAX_SEQ),
    after: tuple[int, bytes] | None = None,
    page: int = 1000,
    missing: Callable[[int], None] | None = None,
) -> Iterator[list[Item]]:
    """Pages of the topic's entries whose event time is in ``[lo_us, hi_us]``.

    Ordered by (event time, stream id as the index orders members: bytewise).  Entries
    appended after ``cap`` (e.g. by this very replay) are left out; index members whose
    entry is gone (trimmed by someone else) are reported to ``missing``.
    """
    index = keys.index(topic)
    score: int = lo_us if after is None else after[0]
    last: bytes | None = None if after is None else after[1]
    size = page
    while True:
        rows = client.zrangebyscore(index, score, hi_us, start=0, num=size, withscores=True)
        fresh = [
            (m, int(s))
            for m, s in rows
            if last is None or int(s) != score or m > last
        ]
        if not fresh:
            if len(rows) < size:
                return
            size *= 2  # a page full of ties already returned: widen it
            continue
        size = page
        score, last = fresh[-1][1], fresh[-1][0]
        wanted = [(m, s) for m, s in fresh if _sid_key(m) <= cap]
        found = fetch_entries(client, keys.stream(topic), [m for m, _ in wanted])
        items = [(topic, m, found[m], s) for m, s in wanted if m in found]
        if missing is not None and len(items) < len(wanted):
            missing(len(wanted) - len(items))
        if items:
            yield items
        if len(rows) < size:
            return


def fetch_entries(client: Any, stream: str, sids: Sequence[bytes]) -> dict[bytes, Fields]:
    """The entries with these stream ids (missing ones left out).

    Events mostly arrive in event-time order, so one XRANGE over the span brings them all;
    entries out of the span (back-filled events) are fetched one by one, pipelined.
    """
    if not sids:
        return {}
    lo, hi = min(sids, key=_sid_key), max(sids, key=_sid_key)
    want = set(sids)
    got: dict[bytes, Fields] = {}
    for sid, fields in client.xrange(stream, lo, hi, count=len(sids) * 2 + 16):
        if sid in want:
            got[sid] = fields
    rest = [s for s in sids if s not in got]
    if rest:
        pipe = client.pipeline(transaction=False)
        for s in rest:
            pipe.xrange(stream, s, s)
        for found in pipe.execute():
            if found:
                got[found[0][0]] = found[0][1]
    return got


def merged(readers: Sequence[Iterator[list[Item]]], by: By, page: int) -> Iterator[list[Item]]:
    """Merge per-topic pages into one order: stream id (append) or event time."""
    if len(readers) == 1:
        yield from readers[0]
        return
    key: Callable[[Item], Any]
    if by == "append":
        def key(it: Item) -> Any:
            return (_sid_key(it[1]), it[0])
    else:
        def key(it: Item) -> Any:
            return (it[3], it[0], it[1])
    flat = heapq.merge(*(chain.from_iterable(r) for r in readers), key=key)
    while True:
        chunk = list(islice(flat, page))
        if not chunk:
            return
        yield chunk


def rechunk(pages: Iterable[list[Item]], size: int) -> Iterator[list[Item]]:
    """Re-cut pages into batches of ``size`` items (the last one may be shorter)."""
    buf: list[Item] = []
    for p in pages:
        if not buf and len(p) == size:
            yield p
            continue
        buf.extend(p)
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


# filters -----------------------------------------------------------------------------------
class TypeFilter:
    """Tests an entry's ``type`` field against globs, caching the answer per type."""

    def __init__(self, *glob_lists: Sequence[str]) -> None:
        self.lists = [[compile_glob(validate_glob(g)) for g in gl] for gl in glob_lists if gl]
        self._cache: dict[bytes, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.lists)

    def __call__(self, fields: Fields) -> bool:
        raw = fields.get(b"type", b"")
        ok = self._cache.get(raw)
        if ok is None:
            t = raw.decode(errors="replace")
            ok = self._cache[raw] = all(any(p.fullmatch(t) for p in pl) for pl in self.lists)
        return ok


def split_globs(values: Iterable[str]) -> list[str]:
    """``--types a.*,b.c --types d`` → ``["a.*", "b.c", "d"]`` (validated)."""
    out = [g.strip() for v in values for g in v.split(",") if g.strip()]
    for g in out:
        validate_glob(g)
    return out


# rendering ---------------------------------------------------------------------------------
def iso_us(us: int) -> str:
    """µs since the epoch → ISO 8601 UTC with a ``Z``."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


def envelope(codec: Codec, topic: str, sid: bytes, f: Fields) -> dict[str, Any]:
    """The JSON envelope of an entry (DESIGN §8): the event's fields plus its stream id.

    Payloads are decoded without a registered class (the CLI knows none).  An entry that
    cannot be decoded gives ``{"stream_id", "topic", "error"}`` instead of stopping a scan.
    """
    try:
        raw = f[b"data"]
        if len(raw) > codec.max_event_bytes:
            raise ValueError(f"payload of {len(raw)} bytes is over the size cap")
        enc = f.get(b"enc", b"mp")
        if enc == b"mp":
            data = _MP.decode(raw)
        elif enc == b"js":
            data = _JS.decode(raw)
        else:
            raise ValueError(f"unknown payload encoding {enc!r}")
        meta_raw = f.get(b"meta", b"{}")
        out: dict[str, Any] = {
            "id": f[b"id"].decode(),
            "type": f[b"type"].decode(),
            "topic": topic,
            "data": data,
            "metadata": _META.decode(meta_raw) if meta_raw != b"{}" else {},
            "timestamp": iso_us(int(f[b"ts"])),
            "version": f.get(b"ver", b"1.0").decode(),
            "stream_id": sid.decode(),
        }
    except (KeyError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        if isinstance(exc, KeyError):
            name = exc.args[0]
            reason = f"missing field {name.decode() if isinstance(name, bytes) else name!r}"
        else:
            reason = str(exc)
        err = DecodeError(reason, stream=topic, entry_id=sid.decode())
        return {"stream_id": sid.decode(), "topic": topic, "error": str(err)}
    if b"arc" in f:
        out["archived"] = True
    return out
