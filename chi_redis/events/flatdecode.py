"""Decoding many flat stream entries of one topic column by column.

:func:`decode_columns` gives the events :meth:`~.codec.Codec.decode_flat` gives, one entry
at a time, for entries all in the layout the publish script writes, with most of the work
done by C loops over whole columns rather than by Python code per event: the entries'
cells are laid end to end and sliced into columns (ids, types, times, ...), the ids are
decoded and checked as one string, the event times parsed by one msgspec call, each
distinct type, version, encoding and metadata blob is handled once, and the payloads are
decoded by ``map``.  Only building the :class:`Event` objects is left to a Python loop.

It raises (any exception) at anything it cannot take as it is: entries of another layout,
or of different widths, an event time outside its range, any bad value.  The caller then
decodes the entries one by one, which names each problem: the events and the errors are
the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import chain
from operator import call
from typing import TYPE_CHECKING, Any

import msgspec

from .event import Event, registered_type
from .nesting import DepthChecked

if TYPE_CHECKING:
    from .codec import Codec

__all__ = ["decode_columns", "payload_kind"]

_LAYOUT = (b"id", b"type", b"ts", b"ver", b"meta", b"enc", b"data")
_WIDTH = 2 * len(_LAYOUT)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TEMPLATE = Event(type="template", id="template", timestamp=_EPOCH)
# Event times, µs as decimal digits: checked as JSON integers, then read as ``<µs>e-6``
# JSON numbers (seconds), which msgspec turns into aware UTC datetimes through a double:
# exact to the µs (the value ``_EPOCH + timedelta(microseconds=…)`` gives) while the µs
# count is well under 2**53, so only up to ``_TIMES_UNTIL`` (2096); other event times go
# the one-by-one way.
_INTS = msgspec.json.Decoder(list[int])
_TIMES = msgspec.json.Decoder(list[datetime], strict=False)
_TIMES_UNTIL = 4 * 10**15
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))


def payload_kind(codec: Codec, raw_type: bytes, tag: bytes) -> tuple[str, Any]:
    """The checked type name and the payload decoder of entries of this type and encoding
    (what :meth:`Codec.decode_data` would pick for each)."""
    type_ = codec._type_names.get(raw_type) or codec._type_name(raw_type)
    cls = registered_type(type_)
    if cls is not None:
        return type_, codec._decoder(tag, cls).decode
    if tag == b"mp":
        return type_, codec._untyped_mp.decode
    if tag == b"js":
        return type_, codec._untyped_js.decode
    raise ValueError(f"unknown payload encoding {tag!r}")


def _columns(flats: Sequence[list[bytes]]) -> list[list[bytes]]:
    """The values of each field of the layout, one list per field, entry order."""
    width = len(flats[0])
    if width < _WIDTH or set(map(len, flats)) != {width}:
        raise ValueError("entries of another layout or of different widths")
    cells = list(chain.from_iterable(flats))
    n = len(flats)
    for k, name in enumerate(_LAYOUT):
        if cells[2 * k::width].count(name) != n:
            raise ValueError("entries of another layout")
    return [cells[k::width] for k in range(1, _WIDTH, 2)]


def _event_ids(raw: list[bytes]) -> list[str]:
    """The ids, decoded and checked (1 to 128 printable characters) as one string: a space
    is printable, so the joined ids are printable exactly when each one is (and when
    they are all printable ASCII, as UUIDs are, nothing is left once those are deleted)."""
    joined_raw = b" ".join(raw)
    joined = joined_raw.decode()
    ids = joined.split(" ")
    if len(ids) != len(raw) or "" in ids or max(map(len, ids)) > 128 or (
        joined_raw.translate(None, _PRINTABLE_ASCII) and not joined.isprintable()
    ):
        raise ValueError("an id holds a space or is not a valid event id")
    return ids


def _event_times(raw: list[bytes]) -> list[datetime]:
    stamps = _INTS.decode(b"[" + b",".join(raw) + b"]")
    if len(stamps) != len(raw) or min(stamps) < 0 or max(stamps) >= _TIMES_UNTIL:
        raise ValueError("event time out of the column path's range")
    times = _TIMES.decode(b"[" + b"e-6,".join(raw) + b"e-6]")
    if len(times) != len(raw):
        raise ValueError("event times do not match the entries")
    return times


def _once_each(fn: Any, raw: list[bytes]) -> dict[bytes, Any]:
    return {value: fn(value) for value in set(raw)}


def _payloads(codec: Codec, types: list[bytes], encs: list[bytes], datas: list[bytes]
              ) -> tuple[list[str], list[Any]]:
    """Each entry's checked type name and decoded payload."""
    longest = max(map(len, datas))
    if longest > codec.max_event_bytes:
        raise ValueError("payload over the size cap")
    one_type, one_enc = set(types), set(encs)
    if len(one_type) == len(one_enc) == 1:  # the usual query: one type, one encoding
        type_, decode = payload_kind(codec, one_type.pop(), one_enc.pop())
        checked = getattr(decode, "__self__", None)
        if isinstance(checked, DepthChecked):  # short payloads cannot nest too deep
            decode = checked.decoder_for(longest)
        return [type_] * len(datas), list(map(decode, datas))
    pairs = list(zip(types, encs, strict=True))
    kinds = {kind: payload_kind(codec, *kind) for kind in set(pairs)}
    names, decoders = zip(*map(kinds.__getitem__, pairs), strict=True)
    return list(names), list(map(call, decoders, datas))


def decode_columns(codec: Codec, flats: Sequence[list[bytes]], topic: str) -> list[Event]:
    """The events of these flat entries of ``topic`` (a checked name), in entry order.

    Raises at the first thing it cannot take as it is (see the module's docstring).
    """
    if not flats:
        return []
    raw_ids, types, stamps, vers, metas, encs, datas = _columns(flats)
    ids, times = _event_ids(raw_ids), _event_times(stamps)
    names, payloads = _payloads(codec, types, encs, datas)
    by_version = _once_each(bytes.decode, vers)
    if "" in by_version.values():
        raise ValueError("empty version")
    versions = list(map(by_version.__getitem__, vers))
    by_meta = _once_each(codec._metadata, metas)  # each a dict of its own
    metadata = list(map(by_meta.__getitem__, metas))
    if len(by_meta) < len(flats):  # shared: every event gets its own copy
        metadata = list(map(dict, metadata))
    template = _TEMPLATE.__copy__()  # type: ignore[attr-defined]
    template.topic = topic
    new_event = template.__copy__  # no __post_init__: every field is checked above
    out: list[Event] = []
    append = out.append
    for event_id, type_, when, version, meta, data in zip(
        ids, names, times, versions, metadata, payloads, strict=True
    ):
        event = new_event()
        event.id = event_id
        event.type = type_
        event.timestamp = when
        event.version = version
        event.metadata = meta
        event.data = data
        append(event)
    return out
