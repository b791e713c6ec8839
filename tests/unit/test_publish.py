"""Publishing: one round trip, atomic indexes, idempotency, batches and partial failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import redis.exceptions as rex
from support import CommandCounter, wait_until

from chi_redis import (
    Event,
    EventBus,
    PublishError,
    RedisUnavailableError,
    RetryPolicy,
    ValidationError,
)
from chi_redis.backend.scripts import script
from chi_redis.backend.streamids import ON_TIME_AHEAD_MS, ON_TIME_BEHIND_MS

NO_RETRY = RetryPolicy(attempts=1)


def ev(i: int = 0, type_: str = "user.signed_up", **kw: Any) -> Event:
    return Event(type=type_, data={"i": i}, **kw)


def test_publish_returns_the_stream_id_and_writes_entry_index_and_lookup(
    bus: EventBus, client: redis.Redis
) -> None:
    event = ev(1, metadata={"source": "test"})
    client.script_load(script("publish_one").source)  # as after the first publish
    bus.writer.register(["user"])  # as after the first publish of the topic (its SADD)
    with CommandCounter(client) as counter:
        sid = bus.publish(event)
    assert counter.count == 1  # one round trip
    k = bus.keys
    entries = client.xrange(k.stream("user"))
    assert [e[0].decode() for e in entries] == [sid]
    fields = entries[0][1]
    assert fields[b"id"] == event.id.encode() and fields[b"type"] == b"user.signed_up"
    assert b"arc" not in fields
    # In the time index only when late for its entry (docs/design.md §3.3).
    delay_ms = int(sid.split("-")[0]) - event.timestamp_us // 1000
    late = delay_ms > ON_TIME_BEHIND_MS or delay_ms < -ON_TIME_AHEAD_MS
    assert client.zscore(k.index("user"), sid) == (event.timestamp_us if late else None)
    assert client.hget(k.ids("user"), event.id) == f"user {sid}".encode()
    assert client.smembers(k.topics()) == {b"user"}
    assert bus.store.load(event.id) == event


def test_same_event_published_twice_is_written_once(bus: EventBus, client: redis.Redis) -> None:
    event = ev()
    first = bus.publish(event)
    assert bus.publish(event) == first
    assert bus.publish_batch([event, event]) == [first, first]
    assert client.xlen(bus.keys.stream("user")) == 1


def test_idempotency_key_returns_the_first_stream_id(bus: EventBus, client: redis.Redis) -> None:
    first = bus.publish(ev(1), idempotency_key="order-42")
    again = bus.publish(ev(2), idempotency_key="order-42")  # a different event, same key
    assert again == first
    assert client.xlen(bus.keys.stream("user")) == 1
    ttl = client.pttl(bus.keys.idem("user", "order-42"))
    assert 0 < ttl <= 24 * 3600 * 1000
    other = bus.publish(ev(3), idempotency_key="order-43")
    assert other != first
    assert client.xlen(bus.keys.stream("user")) == 2


def test_idempotency_keys_are_scoped_per_topic(bus: EventBus, client: redis.Redis) -> None:
    bus.publish(ev(1, "user.signed_up"), idempotency_key="k")
    bus.publish(ev(2, "order.placed"), idempotency_key="k")
    assert client.xlen(bus.keys.stream("user")) == 1
    assert client.xlen(bus.keys.stream("order")) == 1


def test_idempotency_key_expires_after_its_ttl(client: redis.Redis, ns: str) -> None:
    bus = EventBus(client, namespace=ns, idempotency_ttl_ms=150)
    first = bus.publish(ev(1), idempotency_key="once")
    key = bus.keys.idem("user", "once")
    assert 0 < client.pttl(key) <= 150
    wait_until(lambda: not client.exists(key), timeout=30, message="idempotency key expiry")
    second = bus.publish(ev(2), idempotency_key="once")
    assert second != first
    assert client.xlen(bus.keys.stream("user")) == 2


@pytest.mark.parametrize("bad", ["", "a\nb", "x" * 257, 5])
def test_invalid_idempotency_key_is_rejected_before_redis(
    bad: Any, bus: EventBus, client: redis.Redis
) -> None:
    with CommandCounter(client) as counter, pytest.raises(ValidationError) as info:
        bus.publish(ev(), idempotency_key=bad)
    assert info.value.field == "idempotency_key"
    assert counter.count == 0


def test_publish_batch_preserves_order_across_topics(bus: EventBus, client: redis.Redis) -> None:
    types = ["user.signed_up", "order.placed", "user.renamed", "billing.paid"]
    events = [ev(i, types[i % 4]) for i in range(1234)]
    ids = bus.publish_batch(events, chunk_size=100)
    assert len(ids) == len(events)
    for topic in ("user", "order", "billing"):
        mine = [(e.id, sid) for e, sid in zip(events, ids, strict=True) if e.topic == topic]
        entries = client.xrange(bus.keys.stream(topic))
        assert [(f[b"id"].decode(), sid.decode()) for sid, f in entries] == mine


def test_publish_batch_of_nothing_sends_nothing(bus: EventBus, client: redis.Redis) -> None:
    with CommandCounter(client) as counter:
        assert bus.publish_batch([]) == []
    assert counter.count == 0


def test_publish_batch_validates_everything_before_sending(
    bus: EventBus, client: redis.Redis
) -> None:
    events: list[Any] = [ev(i) for i in range(10)]
    events.insert(5, {"type": "user.signed_up"})
    with CommandCounter(client) as counter, pytest.raises(ValidationError) as info:
        bus.publish_batch(events)
    assert info.value.field == "events[5]"
    assert counter.count == 0


def test_store_archives_without_delivery_marker_missing(bus: EventBus, client: redis.Redis) -> None:
    event = ev(7)
    sid = bus.store.store(event)
    fields = client.xrange(bus.keys.stream("user"))[0][1]
    assert fields[b"arc"] == b"1"
    assert bus.store.store(event) == sid
    assert bus.store.load(event.id) == event


def fail_on_call(bus: EventBus, monkeypatch: pytest.MonkeyPatch, n: int, *, after: bool) -> None:
    """Make the n-th pipeline round trip fail (before or after it reached Redis)."""
    original = bus.writer.send_pipelined
    calls = {"n": 0}

    def flaky(group: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            if after:
                original(group)
            raise rex.ConnectionError("connection reset by peer")
        return original(group)

    monkeypatch.setattr(bus.writer, "send_pipelined", flaky)


def test_failed_round_trip_reports_written_and_failed_events(
    client: redis.Redis, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = EventBus(client, namespace=ns, retry=NO_RETRY)
    events = [ev(i) for i in range(250)]
    fail_on_call(bus, monkeypatch, 2, after=False)  # chunks of 10, 20 chunks per round trip
    with pytest.raises(PublishError) as info:
        bus.publish_batch(events, chunk_size=10)
    err = info.value
    assert sorted(err.written) == list(range(200))
    assert err.failed == list(range(200, 250))
    assert isinstance(err.cause, RedisUnavailableError)
    entries = client.xrange(bus.keys.stream("user"))
    assert [sid.decode() for sid, _ in entries] == [err.written[i] for i in range(200)]
    assert [f[b"id"].decode() for _, f in entries] == [e.id for e in events[:200]]
    # Publishing the whole batch again writes only what is missing, in order.
    monkeypatch.undo()
    ids = bus.publish_batch(events, chunk_size=10)
    assert ids[:200] == [err.written[i] for i in range(200)]
    assert client.xlen(bus.keys.stream("user")) == 250


def test_lost_reply_is_reported_as_written(
    client: redis.Redis, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = EventBus(client, namespace=ns, retry=NO_RETRY)
    events = [ev(i) for i in range(30)]
    fail_on_call(bus, monkeypatch, 1, after=True)  # Redis wrote them, the reply was lost
    with pytest.raises(PublishError) as info:
        bus.publish_batch(events, chunk_size=10)
    assert sorted(info.value.written) == list(range(30))
    assert info.value.failed == []
    assert client.xlen(bus.keys.stream("user")) == 30


def test_retry_after_a_lost_reply_does_not_duplicate(
    client: redis.Redis, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = EventBus(client, namespace=ns, retry=RetryPolicy(attempts=3, base_ms=1))
    events = [ev(i) for i in range(40)]
    fail_on_call(bus, monkeypatch, 1, after=True)
    ids = bus.publish_batch(events, chunk_size=10)
    assert len(ids) == 40 and len(set(ids)) == 40
    assert client.xlen(bus.keys.stream("user")) == 40


def test_single_publish_retry_after_a_lost_reply_does_not_duplicate(
    client: redis.Redis, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = EventBus(client, namespace=ns, retry=RetryPolicy(attempts=2, base_ms=1))
    original = bus.writer.send_one  # one event: lua/publish_one.lua
    calls = {"n": 0}

    def flaky(keys: Any, argv: Any) -> Any:
        calls["n"] += 1
        result = original(keys, argv)
        if calls["n"] == 1:
            raise rex.TimeoutError("timeout reading from socket")
        return result

    monkeypatch.setattr(bus.writer, "send_one", flaky)
    sid = bus.publish(ev(1))
    assert calls["n"] == 2
    assert [s.decode() for s, _ in client.xrange(bus.keys.stream("user"))] == [sid]


def test_publish_works_after_the_script_cache_is_flushed(
    fake_client: redis.Redis, ns: str
) -> None:
    bus = EventBus(fake_client, namespace=ns)
    bus.publish(ev(1))
    fake_client.script_flush()
    bus.publish(ev(2))
    fake_client.script_flush()
    assert len(bus.publish_batch([ev(3), ev(4)])) == 2
    assert fake_client.xlen(bus.keys.stream("user")) == 4


def test_event_time_is_the_index_score_even_when_backdated(
    bus: EventBus, client: redis.Redis
) -> None:
    old = datetime(2020, 2, 29, 12, 30, 15, 250000, tzinfo=UTC)
    sid = bus.publish(ev(1, timestamp=old))
    assert client.zscore(bus.keys.index("user"), sid) == old.timestamp() * 1_000_000
    found = bus.store.load_by_time_range(old, old + timedelta(microseconds=1))
    assert [e.timestamp for e in found] == [old]


def test_url_is_public_and_never_shows_the_password() -> None:
    bus = EventBus.from_url("redis://:s3cret@127.0.0.1:1/2", namespace="x")
    try:
        assert bus.url == "redis://127.0.0.1:1/2"
        assert "s3cret" not in repr(bus)
    finally:
        bus.close()


def test_call_once_does_not_retry_and_maps_errors(client: redis.Redis, ns: str) -> None:
    bus = EventBus(client, namespace=ns, retry=RetryPolicy(attempts=5, base_ms=1))
    calls = {"n": 0}

    def lost() -> None:
        calls["n"] += 1
        raise rex.ConnectionError("connection reset by peer")

    with pytest.raises(RedisUnavailableError):
        bus.call_once(lost)
    assert calls["n"] == 1
    with pytest.raises(RedisUnavailableError):
        bus.call(lost)
    assert calls["n"] == 6


def test_the_topics_set_is_written_once_a_minute_and_so_comes_back_after_a_delete(
    bus: EventBus, client: redis.Redis
) -> None:
    k = bus.keys
    client.script_load(script("publish_one").source)
    with CommandCounter(client) as counter:
        bus.publish(ev(1))
    assert counter.count == 2  # a topic's first publish: SADD, then the script
    assert client.smembers(k.topics()) == {b"user"}
    client.delete(k.topics())  # a FLUSH or a restore lost the set
    bus.publish_batch([ev(2), ev(3, topic="order")])
    assert client.smembers(k.topics()) == {b"order"}  # "user" is known for a minute
    bus.writer.registered.until = 0.0  # the minute has passed
    bus.publish(ev(4))
    assert client.smembers(k.topics()) == {b"order", b"user"}
