"""Reading history: ranges of topic streams, by append time or by event time.

Two ways to ask for "what happened between t1 and t2" (docs/design.md §3.3):

- by append time (``by="append"``): the stream ids themselves are server time in ms, so
  the range is an XRANGE, paged with an exclusive start (``(<last id>``);
- by event time (``by="event-time"``): the stream by id range (with a margin) merged with
  the topic's late index (score = event time in µs), paged by an ``(event time, stream id)``
  cursor (:mod:`chi_redis.store.eventtime`).

Several topics are merged into one order (stream id, or event time).  Every reader is
resumable from a position (the last item it returned), which is what replay checkpoints.
:meth:`chi_redis.events.codec.Codec.envelope` turns an item into the JSON envelope the CLI
prints; :class:`chi_redis.store.query.TypeFilter` picks items by type.
"""

from __future__ import annotations

import heapq
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain, islice
from typing import Any, Literal, TypeVar

from ..backend.keys import Keys
from ..backend.streamids import MAX_SEQ, StreamId, format_id, parse_id, succ
from .eventtime import event_time_pages, flat_view

__all__ = [
    "By",
    "Fields",
    "Item",
    "index_pages",
    "item_pos",
    "merged",
    "pos_key",
    "prefetched",
    "reader",
    "rechunk",
    "str_fields",
    "stream_pages",
]

By = Literal["append", "event-time"]
#: One entry's fields, names decoded (``{"id": b"...", "type": b"...", ...}``): the shape a
#: subscription's actor receives, so replay hands them over without rebuilding them.
Fields = dict[str, bytes]
#: One entry read from history: topic, stream id, fields, event time (µs; 0 by append time).
Item = tuple[str, bytes, Fields, int]


# reading entries -----------------------------------------------------------------------------
class _FieldNames(dict[bytes, str]):
    """Field name bytes → str, decoding (and remembering) names it has not seen."""

    def __missing__(self, key: bytes) -> str:
        if len(self) > 1024:  # only a hostile producer invents this many field names
            self.clear()
        value = self[key] = key.decode(errors="replace")
        return value


_NAMES = _FieldNames({n.encode(): n for n in ("id", "type", "ts", "ver", "meta", "enc", "data",
                                                "arc")})


def str_fields(raw: Any) -> Fields:
    """An entry's fields (a flat ``[k, v, ...]`` reply or a bytes-keyed dict), names decoded."""
    if isinstance(raw, dict):
        return {_NAMES[k]: v for k, v in raw.items()}
    it = iter(raw)
    return dict(zip(map(_NAMES.__getitem__, it), it, strict=False))


#: The field names of an entry the publish script wrote (docs/design.md §3.2), as read
#: and decoded: such an entry's names are compared at once, not decoded one by one.
_LAYOUT = [b"id", b"type", b"ts", b"ver", b"meta", b"enc", b"data"]
_LAYOUT_NAMES = ("id", "type", "ts", "ver", "meta", "enc", "data")


def _parse_items(response: Any, **options: Any) -> Any:
    """XRANGE reply → Items of ``options["chi_topic"]`` (or ``(id, Fields)`` pairs)."""
    topic = options.get("chi_topic")
    names = _NAMES.__getitem__
    if topic is None:
        return [(sid, str_fields(flat)) for sid, flat in response or ()]
    out = []
    layout, layout_names = _LAYOUT, _LAYOUT_NAMES
    for sid, flat in response or ():
        if isinstance(flat, dict):
            out.append((topic, sid, str_fields(flat), 0))
        elif flat[0::2] == layout:
            out.append((topic, sid, dict(zip(layout_names, flat[1::2], strict=False)), 0))
        else:
            it = iter(flat)
            out.append((topic, sid, dict(zip(map(names, it), it, strict=False)), 0))
    return out


def reader(client: Any, key: str) -> Any:
    """A client on the same connection pool whose XRANGE returns ``(id, Fields)`` pairs
    (or Items, given ``chi_topic=``): it skips redis-py's bytes-keyed dict per entry,
    which a replay would rebuild anyway.  On a cluster, the pool of the master serving
    ``key`` (every read of a replay names one topic's stream)."""
    import redis

    from ..backend.cluster import is_cluster

    if is_cluster(client):
        client = client.get_node_from_key(key).redis_connection
    r = redis.Redis(connection_pool=client.connection_pool)
    r.set_response_callback("XRANGE", _parse_items)
    return r


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
    client = reader(client, stream)
    first = succ(after) if after is not None and after >= lo else lo
    if first > hi:
        return
    # Inclusive starts at succ(last) rather than "(last": also valid for ms-<max seq>.
    start, end = format_id(first), format_id(hi)
    command = client.execute_command
    while True:
        items = command("XRANGE", stream, start, end, "COUNT", page, chi_topic=topic)
        if not items:
            return
        yield items
        if len(items) < page:
            return
        start = format_id(succ(parse_id(items[-1][1])))


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

    Ordered by (event time, stream id as the index orders members: bytewise); read from the
    stream by id range and from the late index (:func:`~chi_redis.store.eventtime.
    event_time_pages`).  Entries appended after ``cap`` (e.g. by this very replay) are left
    out; index members whose entry is gone (trimmed by someone else) are reported to
    ``missing``.
    """
    names = _NAMES.__getitem__
    pages = event_time_pages(
        flat_view(client), keys.stream(topic), keys.index(topic), lo_us, hi_us,
        cap=cap, after=after, page=page, missing=missing,
    )
    for entries in pages:
        items: list[Item] = []
        for sid, flat, ts in entries:
            it = iter(flat)
            items.append((topic, sid, dict(zip(map(names, it), it, strict=False)), ts))
        yield items


def merged(readers: Sequence[Iterator[list[Item]]], by: By, page: int) -> Iterator[list[Item]]:
    """Merge per-topic pages into one order: stream id (append) or event time."""
    if len(readers) == 1:
        yield from readers[0]
        return
    key: Callable[[Item], Any]
    if by == "append":
        def key(it: Item) -> Any:
            return (parse_id(it[1]), it[0])
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


T = TypeVar("T")


def prefetched(pages: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Read ``pages`` ahead on a thread, so the next round trip overlaps this page's work.

    Errors of the reader are raised here; closing the generator stops the reader.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for page in pages:
                if not put(("page", page)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    reader = threading.Thread(target=run, name="chi-history-reader", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "page":
                yield value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        stop.set()
