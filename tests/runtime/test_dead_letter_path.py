"""The dead-letter path cannot fail: whatever bytes an entry holds and whatever Redis
answers, an entry ends handled, pending for a later attempt, or dead-lettered with a reason.

- A full Redis (``maxmemory``, ``noeviction``) refuses the retry copy: the entry stays
  pending, is redelivered after the lease, and is handled once memory is freed.
- Redis refuses the dead letter's XADD (NOPERM): the entry stays pending (it was not acked
  first) and is dead-lettered once the write is allowed.
- A topic entry with a field name that is not UTF-8 is dead-lettered (``decode``).
- A private-stream message for a subscription with the wrong arguments is dead-lettered and
  gives back its prefetch slot (prefetch 1: a held slot would wedge the subscription).
- The dead-letter field builders are total (hypothesis feeds them hostile input).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Recorder, Runtime, dlq_len, drained, group_info, stays, wait_until
from support.servers import RedisServers

from chi_redis import Event, EventBus
from chi_redis.runtime.deadletters import (
    dead_letter_fields,
    decode_body,
    encode_body,
    entry_dead_letter,
    message_dead_letter,
)
from chi_redis.runtime.encoder import encode_message

_VALID: dict[Any, Any] = {
    "id": "e-odd", "type": "cart.created", "ts": "1700000000000000", "ver": "1.0",
    "meta": "{}", "enc": "mp", "data": b"\x80",
}


def _pending(client: redis.Redis, stream: str, group: str) -> int:
    info = group_info(client, stream, group)
    return int(info["pending"]) if info else 0


def _no_dramatiq_errors(caplog: pytest.LogCaptureFixture) -> None:
    for text in ("Unexpected failure", "unexpected error", "Unhandled error"):
        assert not [r for r in caplog.records if text in r.getMessage()], text


# a full Redis ------------------------------------------------------------------------------
@pytest.mark.redis
def test_retry_refused_by_a_full_redis_keeps_the_entry_pending(
    redis_servers: RedisServers, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = redis_servers.start("--maxmemory-policy", "noeviction")
    client = server.client()
    runtime = Runtime(EventBus(client, namespace=ns), "real")
    try:
        _full_redis_round_trip(runtime, caplog)
    finally:
        runtime.stop()
        client.close()
    _no_dramatiq_errors(caplog)


def _full_redis_round_trip(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    full = threading.Event()
    failed, handled = Recorder(), Recorder()

    @rt.bus.subscribe("frugal", types=["cart.created"], max_retries=5, min_backoff_ms=10,
                      max_backoff_ms=20)
    def frugal(event: Event) -> None:
        if full.is_set():
            failed.add(event.id)
            raise RuntimeError("downstream down")
        handled.add(event.id)

    broker = rt.broker(max_deliveries=50)
    (sid,) = rt.publish(Event(type="cart.created", data={"n": 1}))
    stream = rt.bus.keys.stream("cart")
    full.set()
    rt.client.config_set("maxmemory", 1)  # every write that may grow memory is refused now
    started = time.monotonic()
    rt.worker(broker)
    # The retry copy cannot be written, so the entry is not acked: it is redelivered after
    # the lease (a lost entry would never run again).
    wait_until(lambda: len(failed) >= 3, 60, message="redeliveries while Redis is full")
    assert _pending(rt.client, stream, "frugal") == 1
    assert [s for s, _ in rt.client.xrange(stream)] == [sid.encode()]
    assert dlq_len(rt.client, rt.bus, "frugal") == 0
    elapsed = time.monotonic() - started
    kept = [r for r in caplog.records if "could not be scheduled for retry" in r.getMessage()]
    assert kept and all(r.levelno == logging.WARNING for r in kept)
    assert len(kept) <= 1 + elapsed / 10, "rate-limited: at most one warning per 10 s"

    rt.client.config_set("maxmemory", 0)
    full.clear()
    wait_until(lambda: len(handled) == 1, 60, message="handled once Redis has room")
    wait_until(lambda: drained(rt.client, rt.bus, "frugal", ["cart"]), 30, message="drained")
    assert dlq_len(rt.client, rt.bus, "frugal") == 0
    assert stays(lambda: len(handled) == 1, 0.5)


@pytest.mark.redis
def test_dead_letter_refused_by_redis_keeps_the_entry_pending(
    redis_servers: RedisServers, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = redis_servers.start()
    admin = server.client()
    # The worker's user may not XADD: every dead letter (and retry copy) is refused.
    worker_client = server.user_client("worker", denied=("xadd",))
    runtime = Runtime(EventBus(worker_client, namespace=ns), "real")
    try:
        _refused_dead_letter(runtime, EventBus(admin, namespace=ns), admin, caplog,
                             lambda: server.allow("worker", "xadd"))
    finally:
        runtime.stop()
        worker_client.close()
        admin.close()
    _no_dramatiq_errors(caplog)


def _refused_dead_letter(
    rt: Runtime, publisher: EventBus, admin: redis.Redis, caplog: pytest.LogCaptureFixture,
    allow_xadd: Callable[[], None],
) -> None:
    runs = Recorder()

    @rt.bus.subscribe("doomed", types=["cart.created"], max_retries=0)
    def doomed(event: Event) -> None:
        runs.add(event.id)
        raise RuntimeError("always")

    broker = rt.broker(max_deliveries=50)
    rt.worker(broker)
    (sid,) = [publisher.publish(Event(type="cart.created", data={"n": 1}))]
    stream = rt.bus.keys.stream("cart")
    wait_until(lambda: len(runs) >= 2, 60, message="redelivery after a refused dead letter")
    assert _pending(admin, stream, "doomed") == 1
    assert dlq_len(admin, rt.bus, "doomed") == 0
    refused = [r for r in caplog.records if "Redis refused" in r.getMessage()]
    assert refused and all(r.levelno == logging.WARNING for r in refused)
    assert len(refused) < len(runs) or len(refused) == 1, "rate-limited"

    allow_xadd()
    wait_until(lambda: dlq_len(admin, rt.bus, "doomed") == 1, 60, message="the dead letter")
    wait_until(lambda: _pending(admin, stream, "doomed") == 0, 30, message="acked")
    (dl,) = publisher.dead_letters("doomed")
    assert dl.source_id == sid and dl.reason == "retries_exhausted"


# a field name that is not UTF-8 --------------------------------------------------------------
def test_field_name_not_utf8_is_dead_lettered_and_later_entries_run(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    handled = Recorder()

    @rt.bus.subscribe("tolerant", types=["cart.created"], max_retries=3, min_backoff_ms=10,
                      max_backoff_ms=20)
    def tolerant(event: Event) -> None:
        handled.add(event.data["n"])

    # A lease shorter than Dramatiq's consumer restart: a crashing read loop handles nothing.
    broker = rt.broker(lease_ms=500, reclaim_interval_ms=100)
    rt.worker(broker)
    rt.publish(Event(type="cart.created", data={"n": 1}))
    wait_until(lambda: handled.items() == [1], message="first good event")
    stream = rt.bus.keys.stream("cart")
    bad = rt.client.xadd(stream, {**_VALID, b"\xff\xfe": b"odd name"})
    rt.publish(Event(type="cart.created", data={"n": 2}))
    wait_until(lambda: dlq_len(rt.client, rt.bus, "tolerant") == 1, message="dead letter")
    wait_until(lambda: sorted(handled.items()) == [1, 2], message="the next good event")
    broker.join("tolerant", timeout=30_000)
    assert drained(rt.client, rt.bus, "tolerant", ["cart"])
    (dl,) = rt.bus.dead_letters("tolerant")
    assert dl.reason == "decode" and dl.error_type == "DecodeError", dl
    assert dl.source_id == bad.decode() and dl.source_stream == stream
    assert dl.event_id == "e-odd" and dl.kind == "event"
    body = decode_body(dl.body)
    assert body["\\xff\\xfe"] == b"odd name"  # the name's bytes, backslash-escaped
    assert body["data"] == b"\x80"
    _no_dramatiq_errors(caplog)


# wrong arguments on the private stream -------------------------------------------------------
@pytest.mark.parametrize("args", [("x",), ("cart", "fields as a str"), (1, {"id": 2})],
                         ids=["one-arg", "str-fields", "wrong-types"])
def test_wrong_arguments_are_dead_lettered_and_free_their_slot(
    rt: Runtime, caplog: pytest.LogCaptureFixture, args: tuple[Any, ...]
) -> None:
    handled = Recorder()

    @rt.bus.subscribe("strict", types=["cart.created"], max_retries=1, min_backoff_ms=10,
                      max_backoff_ms=20)
    def strict(event: Event) -> None:
        handled.add(event.data["n"])

    broker = rt.broker(prefetch=1)
    private = rt.bus.keys.queue("strict")
    for i in range(2):
        rt.client.xadd(private, {"m": encode_message(dramatiq.Message(
            queue_name="strict", actor_name="strict", args=args, kwargs={}, options={},
            message_id=f"bad-{i}", message_timestamp=int(time.time() * 1000),
        ))})
    rt.worker(broker, threads=1)
    rt.publish(*[Event(type="cart.created", data={"n": n}) for n in range(3)])
    wait_until(lambda: sorted(handled.items()) == [0, 1, 2], 60, message="the good events")
    wait_until(lambda: dlq_len(rt.client, rt.bus, "strict") == 2, message="dead letters")
    broker.join("strict", timeout=30_000)
    assert drained(rt.client, rt.bus, "strict", ["cart"])
    assert not broker.states["strict"].inflight
    letters = rt.bus.dead_letters("strict")
    assert all(dl.reason and dl.source_stream == private for dl in letters), letters
    assert {dl.kind for dl in letters} == {"task"}
    _no_dramatiq_errors(caplog)


# the builders are total ----------------------------------------------------------------------
class _Hostile(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
_values = st.recursive(
    _scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids,
                                                                        max_size=3),
    max_leaves=8,
)
_excs = st.sampled_from([None, ValueError("boom password=hunter2"), _Hostile(), KeyError(b"\xff")])


def _storable(fields: dict[str, Any]) -> None:
    assert {"reason", "body", "kind", "sub"} <= fields.keys()
    for k, v in fields.items():
        assert isinstance(k, str), k
        assert type(v) in (str, bytes, int), (k, v)
    assert "hunter2" not in repr(fields)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.dictionaries(st.binary() | st.text() | st.integers(), _values, max_size=6),
       sid=st.binary(max_size=20) | st.text(max_size=20), count=_values, exc=_excs)
def test_entry_dead_letter_never_raises(fields: Any, sid: Any, count: Any, exc: Any) -> None:
    out = entry_dead_letter(sub="s", stream="chi:{t}:stream", sid=sid, fields=fields,
                            reason="decode", count=count, topic="t", exc=exc)
    _storable(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.lists(_values, max_size=3), options=st.dictionaries(st.text(), _values, max_size=4),
       kwargs=st.dictionaries(st.text(), _values, max_size=2), actor=_values, mid=_values,
       exc=_excs, reason=st.sampled_from(["retries_exhausted", "failed", "decode"]))
def test_message_dead_letter_never_raises(
    args: Any, options: Any, kwargs: Any, actor: Any, mid: Any, exc: Any, reason: str
) -> None:
    message: Any = dramatiq.Message(
        queue_name="s", actor_name=actor, args=tuple(args), kwargs=kwargs, options=options,
        message_id=mid, message_timestamp=0,
    )
    out = message_dead_letter(message, sub="s", stream="chi:q:{s}", sid=b"1-1", deliveries=1,
                              reason=reason, exc=exc, is_event_actor=True)
    _storable(out)


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(st.binary() | st.text() | st.integers(), _values, max_size=6),
       exc=_excs, n=_values)
def test_dead_letter_fields_and_body_never_raise(fields: Any, exc: Any, n: Any) -> None:
    body = encode_body(fields)
    assert isinstance(body, bytes)
    out = dead_letter_fields(sub="s", reason="decode", exc=exc, kind="raw", body=body,
                             event_id=n, type_=n, topic=n, source_stream=n, source_id=n,
                             deliveries=n, attempts=n, first_failure_ms=n, tb=n)
    _storable(out)
