"""Stream entry ⇄ Event: field layout, encodings, typed payloads, undecodable entries."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
import redis
from support import CommandCounter, keys_of

from chi_redis import (
    Codec,
    DecodeError,
    Event,
    EventBus,
    PayloadTooLargeError,
    ValidationError,
    event_type,
)
from chi_redis.events.codec import entry_fields


@event_type("codectest.order.created")
class OrderCreated(msgspec.Struct):
    order_id: str
    amount_cents: int
    items: list[str] = []


def sample_event(**kw: object) -> Event:
    fields: dict[str, object] = {
        "type": "codectest.thing.happened",
        "data": {"n": 1, "tags": ["a", "b"], "nested": {"x": 1.5, "ok": True, "none": None}},
        "metadata": {"source": "test", "attempt": 2, "ratio": 0.25, "replay": False},
        "timestamp": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    }
    fields.update(kw)
    return Event(**fields)  # type: ignore[arg-type]


def roundtrip(codec: Codec, event: Event) -> Event:
    fields = entry_fields(codec.encode(event))
    return codec.decode(fields, topic=event.topic, stream="s", entry_id="1-0")


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_untyped_event_round_trips(encoding: str) -> None:
    codec = Codec(encoding)  # type: ignore[arg-type]
    event = sample_event()
    assert roundtrip(codec, event) == event


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_registered_payload_decodes_back_to_its_class(encoding: str) -> None:
    codec = Codec(encoding)  # type: ignore[arg-type]
    event = Event.of(OrderCreated(order_id="o1", amount_cents=1299, items=["sku-1"]))
    back = roundtrip(codec, event)
    assert isinstance(back.data, OrderCreated)
    assert back == event


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_unregistered_type_decodes_to_the_generic_envelope(encoding: str) -> None:
    codec = Codec(encoding)  # type: ignore[arg-type]
    event = sample_event(type="codectest.unknown.kind")
    back = roundtrip(codec, event)
    assert isinstance(back, Event)
    assert isinstance(back.data, dict)
    assert back.data == event.data


def test_entry_keeps_the_envelope_fields_separate() -> None:
    event = sample_event()
    fields = entry_fields(Codec("msgpack").encode(event))
    assert set(fields) == {b"id", b"type", b"ts", b"ver", b"meta", b"enc", b"data"}
    assert fields[b"id"] == event.id.encode()
    assert fields[b"type"] == b"codectest.thing.happened"
    assert fields[b"ts"] == str(event.timestamp_us).encode()
    assert fields[b"ver"] == b"1.0"
    assert msgspec.json.decode(fields[b"meta"]) == event.metadata
    assert fields[b"enc"] == b"mp"
    assert msgspec.msgpack.decode(fields[b"data"]) == event.data
    js = entry_fields(Codec("json").encode(event))
    assert js[b"enc"] == b"js"
    assert msgspec.json.decode(js[b"data"]) == event.data


def test_entries_of_either_encoding_decode_with_either_codec() -> None:
    event = sample_event()
    fields = entry_fields(Codec("json").encode(event))
    assert Codec("msgpack").decode(fields, topic=event.topic) == event


def test_unknown_entry_fields_and_payload_fields_are_ignored() -> None:
    codec = Codec()
    event = Event.of(OrderCreated(order_id="o1", amount_cents=5))
    fields = entry_fields(codec.encode(event))
    fields[b"added-by-a-newer-producer"] = b"x"
    fields[b"data"] = msgspec.msgpack.encode(
        {"order_id": "o1", "amount_cents": 5, "items": [], "new_field": 1}
    )
    assert roundtrip_fields(codec, fields) == event


def roundtrip_fields(codec: Codec, fields: dict[bytes, bytes]) -> Event:
    return codec.decode(fields, topic="codectest", stream="s", entry_id="1-0")


def test_unknown_encoding_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        Codec("xml")  # type: ignore[arg-type]
    assert info.value.field == "encoding"


def good_fields() -> dict[bytes, bytes]:
    return entry_fields(Codec().encode(sample_event()))


def corrupt(**changes: bytes | None) -> dict[bytes, bytes]:
    fields = good_fields()
    for name, value in changes.items():
        if value is None:
            del fields[name.encode()]
        else:
            fields[name.encode()] = value
    return fields


GARBAGE = {
    "missing data": corrupt(data=None),
    "missing type": corrupt(type=None),
    "missing id": corrupt(id=None),
    "missing ts": corrupt(ts=None),
    "bad msgpack": corrupt(data=b"\xc1"),
    "truncated msgpack": corrupt(data=b"\x92\x01"),
    "deep msgpack": corrupt(data=b"\x91" * 100_000),
    "deep json": corrupt(data=b"[" * 100_000, enc=b"js"),
    "bad json": corrupt(data=b"{nope", enc=b"js"),
    "unknown encoding": corrupt(enc=b"zz"),
    "ts not a number": corrupt(ts=b"yesterday"),
    "ts out of range": corrupt(ts=b"9" * 30),
    "nan ts": corrupt(ts=b"nan"),
    "invalid type name": corrupt(type=b"User Created"),
    "non-utf8 type": corrupt(type=b"\xff\xfe"),
    "bad metadata": corrupt(meta=b"[1, 2]"),
    "metadata not json": corrupt(meta=b"\x00"),
    "empty id": corrupt(id=b""),
    "empty entry": {},
    "str values": {k.decode(): v.decode("latin-1") for k, v in good_fields().items()},  # type: ignore[dict-item]
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_undecodable_entry_raises_decode_error_with_stream_and_entry_id(name: str) -> None:
    stream = "ns:{codectest}:stream"
    with pytest.raises(DecodeError) as info:
        Codec().decode(GARBAGE[name], topic="codectest", stream=stream, entry_id="7-1")
    err = info.value
    assert err.stream == "ns:{codectest}:stream"
    assert err.entry_id == "7-1"
    assert "ns:{codectest}:stream" in str(err) and "7-1" in str(err)
    assert err.__cause__ is None and err.__suppress_context__  # no bare msgspec/Recursion error


def test_deep_nesting_is_reported_as_too_deep() -> None:
    with pytest.raises(DecodeError) as info:
        Codec().decode(GARBAGE["deep msgpack"], topic="t", stream="s", entry_id="1-0")
    assert "nested too deeply" in info.value.reason


def test_recursion_error_from_a_decoder_becomes_a_decode_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    codec = Codec()

    def explode(*args: object) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(codec, "decode_data", explode)
    with pytest.raises(DecodeError) as info:
        codec.decode(good_fields(), topic="t", stream="s", entry_id="3-0")
    assert info.value.entry_id == "3-0"


def test_typed_payload_of_the_wrong_shape_is_a_decode_error() -> None:
    fields = entry_fields(Codec().encode(Event.of(OrderCreated(order_id="o", amount_cents=1))))
    fields[b"data"] = msgspec.msgpack.encode({"order_id": 5})
    with pytest.raises(DecodeError) as info:
        roundtrip_fields(Codec(), fields)
    assert "order_id" in str(info.value) or "amount_cents" in str(info.value)


def test_payload_over_the_cap_is_rejected_when_decoding() -> None:
    fields = entry_fields(Codec().encode(sample_event(data="x" * 2000)))
    with pytest.raises(DecodeError):
        Codec(max_event_bytes=1000).decode(fields, topic="t", stream="s", entry_id="1-0")


def test_payload_over_the_cap_is_rejected_when_encoding() -> None:
    codec = Codec(max_event_bytes=1000)
    with pytest.raises(PayloadTooLargeError) as info:
        codec.encode(sample_event(data="x" * 1000))
    assert info.value.field == "data"
    assert info.value.limit == 1000 and info.value.size > 1000
    codec.encode(sample_event(data="x" * 500))  # under the cap: fine


def test_default_cap_is_one_mebibyte() -> None:
    codec = Codec()
    assert codec.max_event_bytes == 1 << 20
    with pytest.raises(PayloadTooLargeError):
        codec.encode(sample_event(data=b"x" * (1 << 20)))


@pytest.mark.parametrize("data", [object(), {1j}, 2**70, -(2**70)], ids=repr)
def test_unencodable_data_is_a_validation_error(data: object) -> None:
    with pytest.raises(ValidationError) as info:
        Codec().encode(sample_event(data=data))
    assert info.value.field == "data"


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_oversize_publish_sends_nothing_to_redis(
    encoding: str, fake_client: redis.Redis, ns: str
) -> None:
    bus = EventBus(
        fake_client,
        namespace=ns,
        encoding=encoding,  # type: ignore[arg-type]
        max_event_bytes=4096,
    )
    big = sample_event(data="x" * 5000)
    small = [sample_event(data=i) for i in range(10)]
    with CommandCounter(fake_client) as counter:
        with pytest.raises(PayloadTooLargeError):
            bus.publish(big)
        with pytest.raises(PayloadTooLargeError):
            bus.publish_batch([*small, big, *small])
        with pytest.raises(PayloadTooLargeError):
            bus.store.store(big)
    assert counter.count == 0
    assert keys_of(fake_client, ns) == []


def _flat(fields: object) -> list[bytes]:
    assert isinstance(fields, dict)
    return [x for kv in fields.items() for x in kv]


@pytest.mark.parametrize("name", list(GARBAGE))
def test_decode_flat_many_reports_each_bad_entry_like_decode_flat(name: str) -> None:
    codec, stream = Codec(), "ns:{codectest}:stream"
    good = _flat(good_fields())
    assert codec.decode_flat_many([(b"1-0", good)], topic="codectest")  # types now cached
    with pytest.raises(DecodeError) as info:
        codec.decode_flat_many(
            [(b"1-0", good), (b"7-1", _flat(GARBAGE[name]))], topic="codectest", stream=stream
        )
    assert info.value.stream == stream and info.value.entry_id == "7-1"


def test_decode_flat_many_matches_decode_flat() -> None:
    codec = Codec()
    events = [sample_event(type=f"codectest.kind{i % 3}", data={"i": i}) for i in range(9)]
    events.append(sample_event(type="codectest.order.created", data=OrderCreated("o1", 5)))
    flats = [codec.encode(e) for e in events]
    many = codec.decode_flat_many([(f"{i}-0".encode(), _flat(entry_fields(f)))
                                   for i, f in enumerate(flats)], topic="codectest")
    one = [codec.decode_flat(_flat(entry_fields(f)), topic="codectest") for f in flats]
    assert many == one and [e.id for e in many] == [e.id for e in events]
    assert isinstance(many[-1].data, OrderCreated)
    with pytest.raises(DecodeError):  # a bad topic name: each entry fails as decode_flat's
        codec.decode_flat_many([(b"1-0", _flat(entry_fields(flats[0])))], topic="Bad Topic")
    assert codec.decode_flat_many([], topic="Bad Topic") == []
