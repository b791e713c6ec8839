"""A batch subscription's members decoded in one pass: the events Codec.decode gives."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from test_codec import GARBAGE, OrderCreated, good_fields, sample_event

from chi_redis import Codec, Event
from chi_redis.events.batchdecode import decode_members
from chi_redis.events.codec import entry_fields

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _members(codec: Codec, events: list[Event], topic: str = "codectest") -> list[list[object]]:
    return [[topic, entry_fields(codec.encode(e)), "s", f"{i}-0"] for i, e in enumerate(events)]


def _one_by_one(codec: Codec, members: list[list[object]]) -> list[Event]:
    return [codec.decode(m[1], topic=m[0], stream=m[2], entry_id=m[3])  # type: ignore[arg-type]
            for m in members]


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_decode_members_gives_what_decode_gives(encoding: str) -> None:
    codec = Codec(encoding)  # type: ignore[arg-type]
    events = [sample_event(type=f"codectest.kind{i % 3}", data={"i": i}) for i in range(9)]
    events += [
        sample_event(type="codectest.order.created", data=OrderCreated("o1", 5, ["x"])),
        sample_event(metadata={}, version="2.1", id="é-ünïcode-id"),
        sample_event(timestamp=datetime(2096, 10, 2, 7, 6, 39, 999999, tzinfo=UTC)),
        sample_event(timestamp=datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
    ]
    members = _members(codec, events)
    got = decode_members(codec, members)
    assert got == _one_by_one(codec, members) == [
        Event(type=e.type, data=e.data, topic="codectest", id=e.id, metadata=e.metadata,
              timestamp=e.timestamp, version=e.version)
        for e in events
    ]
    assert isinstance(got[9].data, OrderCreated)
    assert all(e.timestamp.tzinfo is UTC for e in got)
    assert got[9].metadata is not got[0].metadata and got[0].metadata is not got[1].metadata


def test_event_times_are_read_to_the_microsecond() -> None:
    codec = Codec()
    rng = random.Random(11)
    top = 4 * 10**15  # 2096: later times go the one-by-one way
    stamps = [10**6, 10**6 + 1, 1_765_000_000_000_000, 1_765_000_000_999_999, top - 1]
    stamps += [rng.randrange(10**6, top) for _ in range(2000)]
    events = [sample_event(timestamp=EPOCH + timedelta(microseconds=us)) for us in stamps]
    members = _members(codec, events)
    assert [e.timestamp for e in decode_members(codec, members)] == [e.timestamp for e in events]


@pytest.mark.parametrize("ts", [
    b"999999", b"4000000000000000", b"253402300799999999", b"0001765000000000000", b"-1000000",
    b"+1765000000000000", b"1_765_000_000_000_000", b" 1765000000000000",
])
def test_event_times_outside_the_fast_path_are_left_to_decode(ts: bytes) -> None:
    codec = Codec()
    fields = good_fields()
    fields[b"ts"] = ts
    with pytest.raises(Exception):  # noqa: B017 - the caller then decodes one by one
        decode_members(codec, [["codectest", good_fields()], ["codectest", fields]])


@pytest.mark.parametrize("name", list(GARBAGE))
def test_a_member_decode_refuses_is_refused(name: str) -> None:
    codec = Codec()
    members = [["codectest", good_fields()], ["codectest", GARBAGE[name]]]
    with pytest.raises(Exception):  # noqa: B017 - the caller then decodes one by one
        decode_members(codec, members)


def test_a_bad_topic_or_an_oversized_payload_is_refused() -> None:
    with pytest.raises(Exception):  # noqa: B017
        decode_members(Codec(), [["Bad Topic", good_fields()]])
    with pytest.raises(Exception):  # noqa: B017
        decode_members(Codec(max_event_bytes=8), [["codectest", good_fields()]])
    assert decode_members(Codec(), []) == []
