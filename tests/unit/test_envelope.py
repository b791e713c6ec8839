"""The JSON envelope of a stream entry (Codec.envelope), as the CLI and replay print it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import redis

from chi_redis import Codec, Event
from chi_redis.events.codec import entry_fields, iso_us, iso_us_raw
from chi_redis.store.history import Fields, str_fields

WHEN = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _fields(codec: Codec, archive: bool = False, **changes: bytes | None) -> Fields:
    event = Event(type="user.created", topic="users", data={"a": [1, {"b": None}]},
                  metadata={"k": "v", "n": 3}, id="e-1", timestamp=WHEN)
    raw = entry_fields(codec.encode(event), archive=archive)
    for name, value in changes.items():
        if value is None:
            raw.pop(name.encode())
        else:
            raw[name.encode()] = value
    return str_fields(raw)


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_envelope_of_an_entry_read_back_from_redis(
    fake_client: redis.Redis, encoding: str
) -> None:
    codec = Codec(encoding)  # type: ignore[arg-type]
    sid = fake_client.xadd("s", entry_fields(codec.encode(Event(
        type="user.created", topic="users", data={"x": 1}, id="e-2", timestamp=WHEN))))
    [(got_sid, raw)] = fake_client.xrange("s")
    env = codec.envelope("users", got_sid, str_fields(raw))
    assert env == {
        "id": "e-2", "type": "user.created", "topic": "users", "data": {"x": 1},
        "metadata": {}, "timestamp": "2024-05-01T12:00:00.123456Z", "version": "1.0",
        "stream_id": sid.decode(),
    }
    assert json.loads(codec.envelope_json("users", got_sid, str_fields(raw))) == env


def test_archived_entries_say_so_and_others_do_not() -> None:
    codec = Codec()
    assert codec.envelope("users", b"1-2", _fields(codec, archive=True))["archived"] is True
    assert "archived" not in codec.envelope("users", b"1-2", _fields(codec))
    assert b'"archived":true' in codec.envelope_json("users", b"1-2", _fields(codec, True))


def test_foreign_metadata_and_missing_optional_fields_are_shown_as_they_are() -> None:
    codec = Codec()
    env = codec.envelope("users", b"1-2", _fields(codec, meta=b'{"nested": {"x": 1}}'))
    assert env["metadata"] == {"nested": {"x": 1}}  # not a MetaValue: shown anyway
    bare = codec.envelope("users", b"1-2", _fields(codec, ver=None, enc=None, meta=None))
    assert (bare["version"], bare["metadata"], bare["data"]) == ("1.0", {}, {"a": [1, {"b": None}]})


@pytest.mark.parametrize(("changes", "reason"), [
    ({"ts": None}, "missing field 'ts'"),
    ({"enc": b"zz"}, "unknown payload encoding b'zz'"),
    ({"data": b"\xc1"}, "MessagePack data is malformed"),
    ({"ts": b"abc"}, "invalid literal for int()"),
    ({"data": b"x" * (2 << 20)}, "over the size cap"),
])
def test_an_entry_that_cannot_be_decoded_gives_an_error_line(
    changes: dict[str, bytes | None], reason: str
) -> None:
    codec = Codec()
    env = codec.envelope("users", b"1-2", _fields(codec, **changes))
    assert sorted(env) == ["error", "stream_id", "topic"]
    assert env["stream_id"] == "1-2" and env["topic"] == "users"
    assert env["error"].startswith("cannot decode entry (stream 'users', entry 1-2): ")
    assert reason in env["error"]
    assert json.loads(codec.envelope_json("users", b"1-2", _fields(codec, **changes))) == env


def test_iso_us_is_utc_with_microseconds() -> None:
    assert iso_us(0) == "1970-01-01T00:00:00.000000Z"
    assert iso_us(1_714_564_800_000_001) == "2024-05-01T12:00:00.000001Z"


@pytest.mark.parametrize("raw", [
    b"0", b"7", b"999999", b"1000000", b"1714564800000001", b"1714564800999999",
    b"-1", b"-1714564800000001", b"0001714564800000001", b" 1714564800000001",
    b"+1714564800000001", b"253402300799999999",
])
def test_iso_us_raw_is_iso_us_of_the_parsed_value(raw: bytes) -> None:
    assert iso_us_raw(raw) == iso_us(int(raw))


def test_iso_us_raw_refuses_what_int_refuses() -> None:
    for raw in (b"abc", b"17145648000000x1", b""):
        with pytest.raises(ValueError):
            iso_us_raw(raw)


def test_envelope_lines_are_the_envelopes_one_per_line() -> None:
    codec = Codec()
    items = [("users", b"1-1", _fields(codec), 0),
             ("users", b"1-2", _fields(codec, archive=True), 0),
             ("users", b"1-3", _fields(codec, ts=b"abc"), 0)]
    lines = codec.envelope_lines(items)
    assert lines.endswith(b"\n")
    assert lines.splitlines() == [codec.envelope_json(t, sid, f) for t, sid, f, _ in items]
    assert codec.envelope_lines([]) == b""
