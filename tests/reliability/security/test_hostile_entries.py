"""Hostile stream entries: whatever bytes an entry holds, decoding gives an Event or raises
:class:`DecodeError`, never another exception and never a crash of the process.

Anyone who can write to Redis can write a topic stream entry, so the decoder is fuzzed
(hypothesis) with arbitrary bytes and with the classic attacks on a parser: nesting 100,000
levels deep, truncation, length headers claiming gigabytes, invalid UTF-8, values of the
wrong type, NaN, infinities and integers past 64 bits.  The deep nesting is also decoded in
a subprocess on a thread with a 256 KiB stack, where an unchecked recursive decode dies
with a segmentation fault (chi_redis/events/nesting.py).
"""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import sys
import textwrap
from typing import Any

import dramatiq
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.processes import ROOT

from chi_redis import Codec, DecodeError, Event, event_type
from chi_redis.events.codec import entry_fields
from chi_redis.events.nesting import MAX_DEPTH, check_depth, json_depth_ok, msgpack_depth_ok
from chi_redis.runtime.encoder import MsgpackEncoder, decode_message

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DEEP = 100_000
GB4 = b"\xff\xff\xff\xff"


@event_type("hostile.typed")
class Typed(msgspec.Struct):
    n: int
    name: str


def fields(data: bytes, enc: bytes = b"mp", **over: bytes) -> dict[bytes, bytes]:
    f = {b"id": b"e-1", b"type": b"hostile.any", b"ts": b"1700000000000000", b"ver": b"1.0",
         b"meta": b"{}", b"enc": enc, b"data": data}
    f.update({k.encode(): v for k, v in over.items()})
    return f


HOSTILE: dict[str, dict[bytes, bytes]] = {
    "msgpack nested 1e5 deep": fields(b"\x91" * DEEP + b"\xc0"),
    "msgpack maps nested 1e5 deep": fields(b"\x81\xa1k" * DEEP + b"\xc0"),
    "json nested 1e5 deep": fields(b"[" * DEEP + b"]" * DEEP, b"js"),
    "json objects nested 1e5 deep": fields(b'{"a":' * DEEP + b"1" + b"}" * DEEP, b"js"),
    "json unclosed 1e5 deep": fields(b"[" * DEEP, b"js"),
    "deep and then unterminated string": fields(b"[" * DEEP + b'"\\"', b"js"),
    "truncated msgpack": fields(msgspec.msgpack.encode({"a": [1, 2, 3], "b": "x" * 40})[:-5]),
    "truncated json": fields(b'{"a": [1, 2', b"js"),
    "bin32 claiming 4 GB": fields(b"\xc6" + GB4 + b"abc"),
    "str32 claiming 4 GB": fields(b"\xdb" + GB4 + b"abc"),
    "array32 claiming 4G items": fields(b"\xdd" + GB4 + b"\x01\x02"),
    "map32 claiming 4G pairs": fields(b"\xdf" + GB4 + b"\x01\x02"),
    "ext32 claiming 4 GB": fields(b"\xc9" + GB4 + b"\x01abc"),
    "array of 4G-item arrays": fields(b"\x93" + (b"\xdd" + GB4) * 3),
    "invalid utf-8 string": fields(b"\xa3\xff\xfe\xfd"),
    "invalid utf-8 json": fields(b'"\xff\xfe"', b"js"),
    "never-used byte 0xc1": fields(b"\xc1"),
    "json NaN": fields(b"NaN", b"js"),
    "json Infinity": fields(b"[Infinity, -Infinity]", b"js"),
    "json 1e400": fields(b"1e400", b"js"),
    "json 2**64": fields(str(2**64).encode(), b"js"),
    "json 10**400": fields(b"1" + b"0" * 400, b"js"),
    "msgpack nan and inf": fields(b"\x92\xcb" + struct.pack(">d", float("nan"))
                                  + b"\xcb" + struct.pack(">d", float("inf"))),
    "msgpack uint64 max": fields(b"\xcf" + b"\xff" * 8),
    "typed payload, wrong types": fields(msgspec.msgpack.encode({"n": "x", "name": 5}),
                                         type=b"hostile.typed"),
    "typed payload, 2**64": fields(b"\x82\xa1n\xcf" + b"\xff" * 8 + b"\xa4name\xa1x",
                                   type=b"hostile.typed"),
    "typed payload, deep": fields(b"\x82\xa1n\x01\xa4name" + b"\x91" * DEEP + b"\xc0",
                                  type=b"hostile.typed"),
    "metadata nested deep": fields(b"\xc0", meta=b'{"a":' + b"[" * DEEP + b"]" * DEEP + b"}"),
    "metadata not utf-8": fields(b"\xc0", meta=b'{"\xff":1}'),
    "ts 2**64": fields(b"\xc0", ts=str(2**64).encode()),
    "ts negative huge": fields(b"\xc0", ts=b"-" + b"9" * 40),
    "ts nan": fields(b"\xc0", ts=b"nan"),
    "type with CRLF": fields(b"\xc0", type=b"a\r\nFLUSHALL"),
    "id with NUL": fields(b"\xc0", id=b"e\x00"),
    "unknown encoding": fields(b"\xc0", b"pickle"),
}


def decodes_or_raises_decode_error(f: dict[bytes, bytes]) -> Event | None:
    try:
        return Codec().decode(f, topic="hostile", stream="s", entry_id="1-0")
    except DecodeError as exc:
        assert exc.__cause__ is None
        return None


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_entry_gives_an_event_or_a_decode_error(name: str) -> None:
    f = HOSTILE[name]
    decodes_or_raises_decode_error(f)
    flat = [x for kv in f.items() for x in kv]
    with contextlib.suppress(DecodeError):
        Codec().decode_flat(flat, topic="hostile", stream="s", entry_id="1-0")
    envelope = Codec().envelope("hostile", b"1-0", {k.decode(): v for k, v in f.items()})
    assert "stream_id" in envelope


@pytest.mark.parametrize("name", [n for n in HOSTILE if "deep" in n or "4G" in n or "4 GB" in n])
def test_deep_or_oversized_claims_are_decode_errors(name: str) -> None:
    with pytest.raises(DecodeError):
        Codec().decode(HOSTILE[name], topic="hostile", stream="s", entry_id="1-0")


def test_nesting_up_to_the_limit_still_decodes() -> None:
    ok = b"\x91" * MAX_DEPTH + b"\xc0"
    event = decodes_or_raises_decode_error(fields(ok))
    assert event is not None
    js = Codec().decode(fields(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, b"js"), topic="hostile")
    assert js.data is not None
    with pytest.raises(DecodeError, match="nested too deeply"):
        Codec().decode(fields(b"\x91" + ok), topic="hostile")


# hypothesis ------------------------------------------------------------------------------------
@SETTINGS
@given(data=st.binary(max_size=2048), enc=st.sampled_from([b"mp", b"js"]),
       typed=st.booleans())
def test_arbitrary_payload_bytes_decode_or_raise_decode_error(
    data: bytes, enc: bytes, typed: bool
) -> None:
    decodes_or_raises_decode_error(
        fields(data, enc, **({"type": b"hostile.typed"} if typed else {})))


headers = st.sampled_from([b"\x91", b"\x81\xa1k", b"\xdc\x00\x01", b"\xdd\x00\x00\x00\x01",
                           b"\xc6" + GB4, b"\xdb" + GB4, b"\xdd" + GB4, b"\xdf" + GB4])


@SETTINGS
@given(st.lists(headers, max_size=400).map(b"".join), st.binary(max_size=64))
def test_container_headers_and_garbage_decode_or_raise_decode_error(
    head: bytes, tail: bytes
) -> None:
    decodes_or_raises_decode_error(fields(head + tail))


@SETTINGS
@given(st.dictionaries(st.binary(max_size=8), st.binary(max_size=64), max_size=10))
def test_arbitrary_fields_decode_or_raise_decode_error(f: dict[bytes, bytes]) -> None:
    decodes_or_raises_decode_error(f)
    decodes_or_raises_decode_error({**fields(b"\xc0"), **f})


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
              st.text(max_size=10), st.binary(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=5), inner, max_size=5)),
    max_leaves=60)


@SETTINGS
@given(values)
def test_the_depth_check_accepts_every_payload_msgspec_writes(value: Any) -> None:
    mp = msgspec.msgpack.encode(value)
    msgpack_depth_ok(mp)
    check_depth(b"mp", mp)
    if not isinstance(value, bytes):
        try:
            js = msgspec.json.encode(value)
        except (TypeError, ValueError):
            return
        json_depth_ok(js)
        check_depth(b"js", js)


@SETTINGS
@given(st.integers(1, 2 * MAX_DEPTH), st.sampled_from(["list", "map", "mixed"]))
def test_the_depth_check_counts_levels_exactly(depth: int, kind: str) -> None:
    value: Any = 1
    for level in range(depth):
        value = [value, "x"] if kind == "list" or (kind == "mixed" and level % 2) else {"k": value}
    for enc, raw in ((b"mp", msgspec.msgpack.encode(value)), (b"js", msgspec.json.encode(value))):
        if depth <= MAX_DEPTH:
            check_depth(enc, raw)
        else:
            with pytest.raises(msgspec.DecodeError, match="nested too deeply"):
                check_depth(enc, raw)


# the Dramatiq message decoders ------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"\x91" * DEEP + b"\xc0", b"\x81\xa1k" * DEEP + b"\xc0",
                                 b"\xdf" + GB4, b"\xc1", b""], ids=repr)
def test_hostile_task_messages_raise_the_decoders_own_errors(raw: bytes) -> None:
    with pytest.raises(dramatiq.DecodeError):
        MsgpackEncoder().decode(raw)
    with pytest.raises(ValueError):
        decode_message(raw)


# a small stack -------------------------------------------------------------------------------
SMALL_STACK = """
import json, threading
import msgspec
from chi_redis import Codec, DecodeError
from chi_redis.runtime.encoder import MsgpackEncoder, decode_message
import dramatiq

DEEP = 100_000
def fields(data, enc=b"mp", meta=b"{}"):
    return {b"id": b"e-1", b"type": b"hostile.any", b"ts": b"1700000000000000", b"ver": b"1",
            b"meta": meta, b"enc": enc, b"data": data}
cases = {
    "mp": fields(b"\\x91" * DEEP + b"\\xc0"),
    "mp maps": fields(b"\\x81\\xa1k" * DEEP + b"\\xc0"),
    "js": fields(b"[" * DEEP + b"]" * DEEP, b"js"),
    "js objects": fields(b'{"a":' * DEEP + b"1" + b"}" * DEEP, b"js"),
    "meta": fields(b"\\xc0", meta=b'{"a":' + b"[" * DEEP + b"]" * DEEP + b"}"),
}
out = {}
def run():
    codec = Codec()
    for name, f in cases.items():
        try:
            codec.decode(f, topic="hostile")
            out[name] = "decoded"
        except DecodeError as exc:
            out[name] = "DecodeError: " + exc.reason
        env = codec.envelope("hostile", b"1-0", {k.decode(): v for k, v in f.items()})
        out[name + " envelope"] = "error" if "error" in env else "decoded"
    flat = [x for kv in cases["mp"].items() for x in kv]
    try:
        codec.decode_flat_many([(b"1-0", flat)], topic="hostile")
    except DecodeError:
        out["query page"] = "DecodeError"
    from chi_redis.events.batchdecode import decode_members
    try:
        decode_members(codec, [["hostile", cases["js"]]])
    except ValueError:
        out["batch members"] = "ValueError"
    try:
        MsgpackEncoder().decode(b"\\x91" * DEEP + b"\\xc0")
    except dramatiq.DecodeError:
        out["dramatiq message"] = "DecodeError"
    try:
        decode_message(b"\\x81\\xa1k" * DEEP + b"\\xc0")
    except ValueError:
        out["queue message"] = "ValueError"
threading.stack_size(256 * 1024)
t = threading.Thread(target=run)
t.start()
t.join()
print(json.dumps(out))
"""


def test_deep_nesting_on_a_small_thread_stack_does_not_crash_the_process() -> None:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SMALL_STACK)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -11: SIGSEGV
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("mp", "mp maps", "js", "js objects", "meta"):
        assert out[name].startswith("DecodeError"), out
        assert out[name + " envelope"] == "error", out
    assert "nested too deeply" in out["mp"] and "nested too deeply" in out["js"]
    assert out["dramatiq message"] == "DecodeError" and out["queue message"] == "ValueError"
    assert out["query page"] == "DecodeError" and out["batch members"] == "ValueError"


def test_encoding_refuses_what_decoding_would_refuse() -> None:
    value: Any = None
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    for enc in ("msgpack", "json"):
        with pytest.raises(Exception) as info:
            Codec(enc).encode(Event(type="hostile.any", data=value))  # type: ignore[arg-type]
        assert type(info.value).__name__ == "ValidationError"
        assert "nested too deeply" in str(info.value)
    event = Event(type="hostile.any", data=value[0])  # exactly the limit
    assert Codec().decode(entry_fields(Codec().encode(event)), topic="hostile").data == value[0]
