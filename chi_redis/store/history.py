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
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from typing import Any, Literal, TypeVar

import msgspec

from ..backend.keys import Keys
from ..errors import DecodeError
from ..events.codec import Codec
from ..events.names import compile_glob, validate_glob
from ..ops.timeparse import MAX_SEQ, StreamId, format_id, parse_id, succ

__all__ = [
    "By",
    "Item",
    "TypeFilter",
    "envelope",
    "envelope_json",
    "index_pages",
    "item_pos",
    "merged",
    "pos_key",
    "prefetched",
    "reader",
    "str_fields",
    "stream_pages",
]

By = Literal["append", "event-time"]
#: One entry's fields, names decoded (``{"id": b"...", "type": b"...", ...}``): the shape a
#: subscription's actor receives, so replay hands them over without rebuilding them.
Fields = dict[str, bytes]
#: One entry read from history: topic, stream id, fields, event time (µs; 0 by append time).
Item = tuple[str, bytes, Fields, int]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_META = msgspec.json.Decoder(dict[str, Any])
_MP = msgspec.msgpack.Decoder()
_JS = msgspec.json.Decoder()


def _sid_key(sid: bytes) -> StreamId:
    return parse_id(sid)


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


def _parse_items(response: Any, **options: Any) -> Any:
    """XRANGE reply → Items of ``options["chi_topic"]`` (or ``(id, Fields)`` pairs)."""
    topic = options.get("chi_topic")
    names = _NAMES.__getitem__
    if topic is None:
        return [(sid, str_fields(flat)) for sid, flat in response or ()]
    out = []
    for sid, flat in response or ():
        if isinstance(flat, dict):
            out.append((topic, sid, str_fields(flat), 0))
        else:
            it = iter(flat)
            out.append((topic, sid, dict(zip(map(names, it), it, strict=False)), 0))
    return out


def reader(client: Any) -> Any:
    """A client on the same connection pool whose XRANGE returns ``(id, Fields)`` pairs
    (or Items, given ``chi_topic=``): it skips redis-py's bytes-keyed dict per entry,
    which a replay would rebuild anyway."""
    import redis

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
    client = reader(client)
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

    Ordered by (event time, stream id as the index orders members: bytewise).  Entries
    appended after ``cap`` (e.g. by this very replay) are left out; index members whose
    entry is gone (trimmed by someone else) are reported to ``missing``.
    """
    index = keys.index(topic)
    entries_client = reader(client)
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
        found = fetch_entries(entries_client, keys.stream(topic), [m for m, _ in wanted])
        items = [(topic, m, found[m], s) for m, s in wanted if m in found]
        if missing is not None and len(items) < len(wanted):
            missing(len(wanted) - len(items))
        if items:
            yield items
        if len(rows) < size:
            return


def fetch_entries(client: Any, stream: str, sids: Sequence[bytes]) -> dict[bytes, Fields]:
    """The entries with these stream ids (missing ones left out); ``client`` from
    :func:`reader`.

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


# filters -----------------------------------------------------------------------------------
class TypeFilter:
    """Tests an entry's ``type`` field against globs, caching the answer per type."""

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


def split_globs(values: Iterable[str]) -> list[str]:
    """``--types a.*,b.c --types d`` → ``["a.*", "b.c", "d"]`` (validated)."""
    out = [g.strip() for v in values for g in v.split(",") if g.strip()]
    for g in out:
        validate_glob(g)
    return out


# rendering ---------------------------------------------------------------------------------
_ISO_SECONDS: dict[int, str] = {}


def iso_us(us: int) -> str:
    """µs since the epoch → ISO 8601 UTC with microseconds and a ``Z``."""
    sec, frac = divmod(us, 1_000_000)
    prefix = _ISO_SECONDS.get(sec)
    if prefix is None:  # events come in bursts: one strftime per second of them
        if len(_ISO_SECONDS) > 4096:
            _ISO_SECONDS.clear()
        prefix = _ISO_SECONDS[sec] = (_EPOCH + timedelta(seconds=sec)).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    return f"{prefix}.{frac:06d}Z"


class Envelope(msgspec.Struct, omit_defaults=True):
    """The JSON envelope of an event (DESIGN §8), plus its stream id."""

    id: str
    type: str
    topic: str
    data: Any
    metadata: Any
    timestamp: str
    version: str
    stream_id: str
    archived: bool = False


_JSON = msgspec.json.Encoder()
_EMPTY: dict[str, Any] = {}


def _envelope(codec: Codec, topic: str, sid: bytes, f: Fields) -> Envelope | dict[str, Any]:
    try:
        raw = f["data"]
        if len(raw) > codec.max_event_bytes:
            raise ValueError(f"payload of {len(raw)} bytes is over the size cap")
        enc = f.get("enc", b"mp")
        if enc == b"mp":
            data = _MP.decode(raw)
        elif enc == b"js":
            data = _JS.decode(raw)
        else:
            raise ValueError(f"unknown payload encoding {enc!r}")
        meta_raw = f.get("meta", b"{}")
        return Envelope(
            f["id"].decode(), f["type"].decode(), topic, data,
            _META.decode(meta_raw) if meta_raw != b"{}" else _EMPTY, iso_us(int(f["ts"])),
            f.get("ver", b"1.0").decode(), sid.decode(), "arc" in f,
        )
    except (KeyError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        if isinstance(exc, KeyError):
            name = exc.args[0]
            reason = f"missing field {name.decode() if isinstance(name, bytes) else name!r}"
        else:
            reason = str(exc)
        err = DecodeError(reason, stream=topic, entry_id=sid.decode())
        return {"stream_id": sid.decode(), "topic": topic, "error": str(err)}


def envelope(codec: Codec, topic: str, sid: bytes, f: Fields) -> dict[str, Any]:
    """The JSON envelope of an entry as a dict (DESIGN §8): the event plus its stream id.

    Payloads are decoded without a registered class (the CLI knows none).  An entry that
    cannot be decoded gives ``{"stream_id", "topic", "error"}`` instead of stopping a scan.
    """
    env = _envelope(codec, topic, sid, f)
    if isinstance(env, dict):
        return env
    out = msgspec.structs.asdict(env)
    if not env.archived:
        del out["archived"]
    return out


def envelope_json(codec: Codec, topic: str, sid: bytes, f: Fields) -> bytes:
    """:func:`envelope` encoded as one compact JSON object (the fast path)."""
    return _JSON.encode(_envelope(codec, topic, sid, f))
