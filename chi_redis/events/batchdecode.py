"""Decoding the members of a batch subscription's message in one pass.

:func:`decode_members` gives the events :meth:`~.codec.Codec.decode` gives, one member at a
time, for a whole batch, with less Python per event: the event times of the batch are
parsed by one msgspec call, the topic is checked once per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from .codec import _EMPTY_META, Codec, _new_event
from .event import Event
from .flatdecode import payload_kind
from .names import validate_name

__all__ = ["decode_members"]

# Event times as ``seconds.micros`` JSON numbers: msgspec reads them as aware UTC datetimes
# through a double, which is exact to the µs (the value ``_EPOCH + timedelta(microseconds=…)``
# gives) while the µs count is well under 2**53: from one second after the epoch up to
# ``_TIMES_UNTIL`` (2096); other event times go the one-by-one way.
_TIMES_DECODER = msgspec.json.Decoder(list[datetime], strict=False)
_TIMES_UNTIL = b"4000000000000000"


def decode_members(codec: Codec, members: Sequence[Sequence[Any]]) -> list[Event]:
    """The events of many ``[topic, fields, …]`` (a batch subscription's members) in one
    pass: the same events :meth:`Codec.decode` gives, with the event times parsed by one
    msgspec call for all of them.

    Raises (any exception) at the first member it cannot take as it is; the caller then
    decodes them one by one with :meth:`Codec.decode`, which names each problem.
    """
    n = len(members)
    stamps: list[bytes] = []
    for m in members:
        raw = m[1][b"ts"]
        if not (6 < len(raw) < 16 or (len(raw) == 16 and raw < _TIMES_UNTIL)) \
                or not raw.isdigit() or raw[0] == 48:  # 48: b"0"
            raise ValueError("event time out of the batch path's range")
        stamps.append(raw[:-6] + b"." + raw[-6:])
    times = _TIMES_DECODER.decode(b"[" + b",".join(stamps) + b"]")
    if len(times) != n:
        raise ValueError("event times do not match the members")
    out: list[Event] = []
    append, new_event, cap = out.append, _new_event, codec.max_event_bytes
    metadata = codec._metadata
    topics: dict[str, str] = {}
    kinds: dict[tuple[bytes, bytes], tuple[str, Any]] = {}  # (type, enc) -> name, decode
    for (topic, f, *_), when in zip(members, times, strict=True):
        data = f[b"data"]
        if len(data) > cap:
            raise ValueError("payload over the size cap")
        kind = (f[b"type"], f.get(b"enc", b"mp"))
        known = kinds.get(kind)
        if known is None:
            known = kinds[kind] = payload_kind(codec, *kind)
        type_, decode = known
        event_id = f[b"id"].decode()
        if not 0 < len(event_id) <= 128 or not event_id.isprintable():
            raise ValueError("invalid event id")
        version = f.get(b"ver", b"1.0").decode()
        if not version:
            raise ValueError("empty version")
        checked = topics.get(topic)
        if checked is None:
            checked = topics[topic] = validate_name(topic, "topic")
        event = new_event()
        event.id = event_id
        event.type = type_
        event.topic = checked
        event.timestamp = when
        event.version = version
        meta = f.get(b"meta", _EMPTY_META)
        event.metadata = {} if meta == _EMPTY_META else metadata(meta)
        event.data = decode(data)  # depth-checked (.nesting.DepthChecked)
        append(event)
    return out
