"""RedisEventStore specifics: undecodable entries, trimmed entries, the id lookup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from chi_redis import DecodeError, Event, EventBus

T0 = datetime(2024, 6, 1, tzinfo=UTC)


def inject_garbage(bus: EventBus, client: redis.Redis, fields: dict[str, bytes]) -> str:
    """XADD a raw entry (bypassing the publisher) and index it like a published one."""
    k = bus.keys
    sid = client.xadd(k.stream("user"), fields).decode()
    client.zadd(k.index("user"), {sid: T0.timestamp() * 1_000_000})
    client.hset(k.ids("user"), "bad-event", f"user {sid}")
    client.sadd(k.topics(), "user")  # as the publisher registers its topics
    return sid


GARBAGE = {
    "bad msgpack": {"id": b"bad-event", "type": b"user.signed_up", "ts": b"1", "data": b"\xc1"},
    "deep nesting": {
        "id": b"bad-event",
        "type": b"user.signed_up",
        "ts": b"1",
        "data": b"\x91" * 100_000,
    },
    "no data": {"id": b"bad-event", "type": b"user.signed_up", "ts": b"1"},
    "no type": {"id": b"bad-event", "ts": b"1", "data": b"\xc0"},
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_undecodable_entry_gives_decode_error_from_every_query(
    name: str, bus: EventBus, client: redis.Redis
) -> None:
    bus.publish(Event(type="user.signed_up", data={}, timestamp=T0))
    sid = inject_garbage(bus, client, GARBAGE[name])
    stream = bus.keys.stream("user")
    queries = [
        lambda: bus.store.load("bad-event"),
        lambda: bus.store.load_by_topic("user"),
        lambda: bus.store.page_by_topic("user"),
        lambda: bus.store.load_by_time_range(T0, T0),
        lambda: bus.store.load_by_time_range(T0, T0, types=["user.signed_up"]),
    ]
    for query in queries:
        with pytest.raises(DecodeError) as info:
            query()
        assert info.value.stream == stream
        assert info.value.entry_id == sid


def test_index_members_whose_entries_are_gone_are_skipped(
    bus: EventBus, client: redis.Redis
) -> None:
    events = [
        Event(type="user.signed_up", data={"i": i}, timestamp=T0 + timedelta(seconds=i))
        for i in range(5)
    ]
    ids = bus.publish_batch(events)
    client.xdel(bus.keys.stream("user"), ids[1], ids[3])  # as retention would
    got = bus.store.load_by_time_range(T0, T0 + timedelta(minutes=1))
    assert got == [events[0], events[2], events[4]]
    assert bus.store.load(events[1].id) is None


def test_backfilled_events_far_from_their_neighbours_are_found(
    bus: EventBus, client: redis.Redis
) -> None:
    # Stream order and event-time order disagree: the span fetch misses, one-by-one finds.
    events = [
        Event(type="user.signed_up", data={"i": i}, timestamp=T0 + timedelta(days=i % 2))
        for i in range(200)
    ]
    bus.publish_batch(events)
    day0 = bus.store.load_by_time_range(T0, T0 + timedelta(hours=1))
    assert {e.id for e in day0} == {e.id for e in events[::2]}


def test_store_writes_archive_entries_with_the_same_indexes(
    bus: EventBus, client: redis.Redis
) -> None:
    event = Event(type="order.placed", data={"x": 1}, timestamp=T0)
    sid = bus.store.store(event)
    k = bus.keys
    assert client.xrange(k.stream("order"))[0][1][b"arc"] == b"1"
    assert client.zscore(k.index("order"), sid) == event.timestamp_us
    assert bus.store.locate(event.id) == ("order", sid)
    assert bus.store.topics() == ["order"]


def test_delete_removes_entry_index_member_and_lookup(bus: EventBus, client: redis.Redis) -> None:
    event = Event(type="order.placed", data={"x": 1}, timestamp=T0)
    bus.publish(event)
    assert bus.store.delete(event.id)
    k = bus.keys
    assert client.xlen(k.stream("order")) == 0
    assert client.zcard(k.index("order")) == 0
    assert client.hget(k.ids("order"), event.id) is None
