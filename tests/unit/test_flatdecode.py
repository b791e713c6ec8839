"""Flat entries decoded column by column: the events, and the errors, decode_flat gives."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from test_codec import GARBAGE, OrderCreated, good_fields, sample_event

from chi_redis import Codec, DecodeError, Event
from chi_redis.events.codec import entry_fields
from chi_redis.events.flatdecode import decode_columns

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TOPIC = "codectest"


def _flat(fields: dict[bytes, bytes]) -> list[bytes]:
    return [x for kv in fields.items() for x in kv]


def _flats(codec: Codec, events: list[Event]) -> list[list[bytes]]:
    return [_flat(entry_fields(codec.encode(e))) for e in events]


def _one_by_one(codec: Codec, flats: list[list[bytes]]) -> list[Event]:
    return [codec.decode_flat(f, topic=TOPIC, stream="s", entry_id=f"{i}-0")
            for i, f in enumerate(flats)]


def _mixed(n: int = 40) -> list[Event]:
    events = [sample_event(type=f"codectest.kind{i % 3}", data={"i": i}) for i in range(n)]
    events += [
        sample_event(type="codectest.order.created", data=OrderCreated("o1", 5, ["x"])),
        sample_event(metadata={}, version="2.1", id="é-ünïcode-id-ß"),
        sample_event(timestamp=datetime(2096, 10, 2, 7, 6, 39, 999999, tzinfo=UTC)),
        sample_event(timestamp=EPOCH + timedelta(microseconds=999_999)),
        sample_event(timestamp=EPOCH),
        sample_event(id="x" * 128),
    ]
    return events


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_columns_give_what_decode_flat_gives(encoding: str) -> None:
    codec = Codec(encoding)  # type: ignore[arg-type]
    events = _mixed()
    flats = _flats(codec, events)
    got = decode_columns(codec, flats, TOPIC)
    assert got == _one_by_one(codec, flats) == [
        Event(type=e.type, data=e.data, topic=TOPIC, id=e.id, metadata=e.metadata,
              timestamp=e.timestamp, version=e.version)
        for e in events
    ]
    assert isinstance(got[40].data, OrderCreated)
    assert all(e.timestamp.tzinfo is UTC for e in got)
    assert len({id(e.metadata) for e in got}) == len(got)  # each event its own dict
    assert decode_columns(codec, [], TOPIC) == []


def test_one_type_and_unique_metadata_and_archived_entries() -> None:
    codec = Codec()
    events = [sample_event(metadata={"n": i}) for i in range(30)]
    flats = [[*f, b"arc", b"1"] for f in _flats(codec, events)]  # what store() writes
    got = decode_columns(codec, flats, TOPIC)
    assert got == _one_by_one(codec, flats)
    assert [e.metadata for e in got] == [{"n": i} for i in range(30)]


def test_event_times_are_read_to_the_microsecond() -> None:
    codec = Codec()
    rng = random.Random(12)
    top = 4 * 10**15
    stamps = [0, 1, 999_999, 10**6, 1_765_000_000_000_000, 1_765_000_000_999_999, top - 1]
    stamps += [rng.randrange(0, top) for _ in range(3000)]
    events = [sample_event(timestamp=EPOCH + timedelta(microseconds=us)) for us in stamps]
    got = decode_columns(codec, _flats(codec, events), TOPIC)
    assert [e.timestamp for e in got] == [e.timestamp for e in events]


def _with(flats: list[list[bytes]], field: bytes, value: bytes) -> list[list[bytes]]:
    bad = list(flats[-1])
    bad[bad.index(field) + 1] = value
    return [*flats[:-1], bad]


@pytest.mark.parametrize(("field", "value"), [
    (b"ts", b"4000000000000000"), (b"ts", b"0001765000000000000"), (b"ts", b"-1000000"),
    (b"ts", b"+1765000000000000"), (b"ts", b"1_765_000_000_000_000"), (b"ts", b"1.5"),
    (b"id", b"two words"), (b"id", b" lead"), (b"id", b"x" * 129), (b"id", b"tab\there"),
    (b"id", b""), (b"ver", b""), (b"enc", b"zz"), (b"type", b"Not A Name"),
])
def test_what_columns_cannot_take_is_left_to_decode_flat(field: bytes, value: bytes) -> None:
    codec = Codec()
    flats = _with(_flats(codec, _mixed(20)), field, value)
    with pytest.raises(Exception):  # noqa: B017 - the caller then decodes one by one
        decode_columns(codec, flats, TOPIC)
    try:  # and decode_flat_many gives exactly what decode_flat gives, or its error
        want: object = _one_by_one(codec, flats)
    except DecodeError as exc:
        want = (exc.entry_id, str(exc))
    try:
        got: object = codec.decode_flat_many(
            [(f"{i}-0".encode(), f) for i, f in enumerate(flats)], topic=TOPIC, stream="s"
        )
    except DecodeError as exc:
        got = (exc.entry_id, str(exc))
    assert got == want


@pytest.mark.parametrize("name", list(GARBAGE))
def test_a_long_batch_reports_each_bad_entry_like_decode_flat(name: str) -> None:
    codec = Codec()
    entries = [(f"{i}-0".encode(), _flat(good_fields())) for i in range(30)]
    entries.insert(17, (b"7-1", _flat(GARBAGE[name])))
    with pytest.raises(DecodeError) as info:
        codec.decode_flat_many(entries, topic=TOPIC, stream="ns:{codectest}:stream")
    assert info.value.stream == "ns:{codectest}:stream" and info.value.entry_id == "7-1"


def test_entries_of_another_layout_or_size_are_refused() -> None:
    codec = Codec()
    flats = _flats(codec, _mixed(20))
    rotated, short = flats[-1][2:] + flats[-1][:2], flats[-1][:-2]
    wider = [[*f, b"arc", b"1"] for f in flats[:-1]]
    for bad in ([*flats[:-1], rotated], [*flats[:-1], short], [*wider, flats[-1]]):
        with pytest.raises(Exception):  # noqa: B017
            decode_columns(codec, bad, TOPIC)
        assert codec.decode_flat_many(
            [(f"{i}-0".encode(), f) for i, f in enumerate(bad) if len(f) >= 14], topic=TOPIC
        ) == [codec.decode_flat(f, topic=TOPIC) for f in bad if len(f) >= 14]
    with pytest.raises(Exception):  # noqa: B017
        decode_columns(Codec(max_event_bytes=8), flats, TOPIC)


@pytest.mark.parametrize("deep_len", [300, 100_000])
def test_one_deep_payload_among_short_ones_is_refused_by_the_column_path(deep_len: int) -> None:
    codec = Codec("msgpack")
    events = [sample_event(type="codectest.one", data={"i": i}) for i in range(20)]
    flats = _flats(codec, events)
    deep = dict(entry_fields(codec.encode(events[7])))
    deep[b"data"] = b"\x91" * deep_len + b"\xc0"  # longer than the depth limit
    flats[7] = _flat(deep)
    with pytest.raises((ValueError, DecodeError)):
        decode_columns(codec, flats, TOPIC)
    with pytest.raises(DecodeError) as err:
        codec.decode_flat_many([(f"{i}-0".encode(), f) for i, f in enumerate(flats)],
                               topic=TOPIC, stream="s")
    assert err.value.kind == "too_deep"
