"""The time index holds late events only; event-time reads merge it with the stream.

An event within ON_TIME_BEHIND_MS before / ON_TIME_AHEAD_MS after its entry's append time is
found by event time through the stream (by id range); any other is also in the index
(docs/design.md §3.3).  Data written when the index held every event stays readable.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import redis

from chi_redis import Event, EventBus
from chi_redis.backend.scripts import script
from chi_redis.backend.streamids import ON_TIME_AHEAD_MS, ON_TIME_BEHIND_MS
from chi_redis.store.eventtime import event_time_entries, flat_view
from chi_redis.store.history import index_pages
from chi_redis.store.query import sort_key


def ev(i: int, at: datetime) -> Event:
    return Event(type="order.created", data={"i": i}, timestamp=at)


def expected(events: list[Event], lo: datetime, hi: datetime) -> list[str]:
    return [e.id for e in sorted(events, key=sort_key) if lo <= e.timestamp <= hi]


def test_lua_scripts_hold_the_on_time_bounds_of_streamids() -> None:
    for name in ("publish", "publish_one", "replay_topic"):
        m = re.search(r"local BEHIND, AHEAD = (\d+), (\d+)", script(name).source)
        assert m is not None, name
        assert (int(m[1]), int(m[2])) == (ON_TIME_BEHIND_MS, ON_TIME_AHEAD_MS), name


def _late(sid: str, ts_us: int) -> bool:
    """The publish scripts' rule (docs/design.md §3.3)."""
    d = int(sid.split("-")[0]) - ts_us // 1000
    return d > ON_TIME_BEHIND_MS or d < -ON_TIME_AHEAD_MS


def test_only_late_events_are_indexed(bus: EventBus, client: redis.Redis) -> None:
    now = datetime.now(UTC)
    on_time = [ev(0, datetime.now(UTC)), ev(1, datetime.now(UTC) - timedelta(milliseconds=20))]
    late = [
        ev(2, now - timedelta(seconds=30)),  # back-dated
        ev(3, now + timedelta(seconds=30)),  # ahead of the server's clock
        ev(4, datetime(2020, 1, 1, tzinfo=UTC)),
    ]
    sids = [bus.publish(e) for e in on_time] + bus.publish_batch(late)
    index = bus.keys.index("order")
    everything = on_time + late
    for e, sid in zip(everything, sids, strict=True):  # indexed exactly when late
        score = client.zscore(index, sid)
        assert score == (e.timestamp_us if _late(sid, e.timestamp_us) else None)
    assert [client.zscore(index, s) for s in sids[2:]] == [e.timestamp_us for e in late]
    lo, hi = datetime(2000, 1, 1, tzinfo=UTC), now + timedelta(days=1)
    got = bus.store.load_by_time_range(lo, hi, topic="order")
    assert [e.id for e in got] == expected(everything, lo, hi)
    got_all = bus.store.load_by_time_range(lo, hi)  # every topic
    assert [e.id for e in got_all] == expected(everything, lo, hi)
    for e in everything:  # each alone, by its own time
        assert [x.id for x in bus.store.load_by_time_range(e.timestamp, e.timestamp)] == [e.id]
        assert bus.store.load(e.id) == e


def test_mixed_times_match_brute_force_with_limits_and_history(
    bus: EventBus, client: redis.Redis
) -> None:
    rnd = random.Random(7)
    now = datetime.now(UTC)
    events = []
    for i in range(600):
        kind = rnd.random()
        if kind < 0.6:  # around the bounds, either side
            delta = timedelta(milliseconds=rnd.randint(-ON_TIME_AHEAD_MS - 20, 900))
        elif kind < 0.9:  # back-dated, some just past the bound
            delta = timedelta(milliseconds=rnd.randint(ON_TIME_BEHIND_MS + 100, 5000))
        else:  # ahead
            delta = -timedelta(milliseconds=rnd.randint(ON_TIME_AHEAD_MS + 100, 3000))
        events.append(ev(i, now - delta))
    for start in range(0, 600, 50):
        bus.publish_batch(events[start : start + 50])
    lo_all, hi_all = now - timedelta(seconds=6), now + timedelta(seconds=6)
    for _ in range(25):
        a, b = sorted(rnd.choice(events).timestamp for _ in range(2))
        want = expected(events, a, b)
        assert [e.id for e in bus.store.load_by_time_range(a, b, topic="order")] == want
        n = rnd.randint(1, 40)
        got = bus.store.load_by_time_range(a, b, topic="order", limit=n)
        assert [e.id for e in got] == want[:n]
    # History readers, small pages, resumed from every position they returned.
    lo = int(lo_all.timestamp() * 1_000_000)
    hi = int(hi_all.timestamp() * 1_000_000)
    items = [it for p in index_pages(client, bus.keys, "order", lo, hi, page=7) for it in p]
    keys = [(it[3], it[1]) for it in items]
    assert keys == sorted(keys) and len(set(keys)) == 600
    by_id = {e.id: e for e in events}
    assert sorted(it[2]["id"].decode() for it in items) == sorted(by_id)
    assert all(it[3] == by_id[it[2]["id"].decode()].timestamp_us for it in items)
    for cut in (0, 1, 99, 300, 598):
        rest = index_pages(client, bus.keys, "order", lo, hi, after=keys[cut], page=13)
        assert [(it[3], it[1]) for p in rest for it in p] == keys[cut + 1 :]


def test_entries_of_the_older_layout_are_read_once(bus: EventBus, client: redis.Redis) -> None:
    """Before, every event was in the index: such data is read once, not twice."""
    now = datetime.now(UTC)
    events = [ev(i, now - timedelta(milliseconds=i)) for i in range(20)]
    sids = bus.publish_batch(events)
    index = bus.keys.index("order")
    for e, sid in zip(events[:10], sids[:10], strict=True):  # as the older script wrote
        client.zadd(index, {sid: e.timestamp_us})
    late = ev(99, now - timedelta(hours=2))
    events.append(late)
    bus.publish(late)
    lo, hi = now - timedelta(hours=3), now + timedelta(seconds=1)
    assert [e.id for e in bus.store.load_by_time_range(lo, hi)] == expected(events, lo, hi)
    lo_us, hi_us = int(lo.timestamp() * 1e6), int(hi.timestamp() * 1e6)
    pages = index_pages(client, bus.keys, "order", lo_us, hi_us, page=4)
    assert sorted(it[2]["id"].decode() for p in pages for it in p) == sorted(e.id for e in events)


def test_delete_and_load_of_late_and_on_time_events(bus: EventBus, client: redis.Redis) -> None:
    now = datetime.now(UTC)
    late, on_time = ev(1, now - timedelta(days=1)), ev(2, now)
    late_sid, _ = bus.publish(late), bus.publish(on_time)
    index = bus.keys.index("order")
    assert client.zscore(index, late_sid) is not None
    assert bus.store.delete(late.id) and bus.store.delete(on_time.id)
    assert client.zcard(index) == 0 and client.hlen(bus.keys.ids("order")) == 0
    assert bus.store.load(late.id) is None and bus.store.load(on_time.id) is None
    lo, hi = now - timedelta(days=2), now + timedelta(days=1)
    assert bus.store.load_by_time_range(lo, hi) == []


def test_unordered_reader_pages_both_sources_and_reads_each_entry_once(
    bus: EventBus, client: redis.Redis
) -> None:
    """``event_time_entries`` (the store's path without a limit), in pages smaller than
    each source, on late, on-time and older-layout (indexed on-time) entries alike."""
    rnd = random.Random(11)
    now = datetime.now(UTC)
    events = [ev(i, now - timedelta(milliseconds=rnd.choice([0, 30, 400, 3000]) + i))
              for i in range(120)]
    sids = bus.publish_batch(events)
    index = bus.keys.index("order")
    for e, sid in list(zip(events, sids, strict=True))[::3]:  # as the older script wrote
        client.zadd(index, {sid: e.timestamp_us})
    raw = flat_view(client)
    for _ in range(15):
        a, b = sorted(rnd.choice(events).timestamp for _ in range(2))
        lo, hi = int(a.timestamp() * 1e6), int(b.timestamp() * 1e6)
        for page in (1, 4, 1000):
            got = event_time_entries(
                raw, bus.keys.stream("order"), index, lo, hi, page=page
            )
            ids = [bus.codec.decode_flat(f, topic="order").id for _, f in got]
            assert sorted(ids) == sorted(expected(events, a, b)), page


def test_a_chunk_indexes_exactly_its_late_events_per_topic(
    bus: EventBus, client: redis.Redis
) -> None:
    """The chunk script settles lateness per topic from its first and last stream ids: a
    topic all on time makes no ZADD, a late event among on-time ones of another topic is
    indexed alone, and events the chunk did not write (already written, repeated) are not
    indexed again."""
    now = datetime.now(UTC)
    known = Event(type="audit.seen", data={}, timestamp=now - timedelta(hours=1))
    bus.publish(known)
    on_time = [Event(type="cart.added", data={"i": i}) for i in range(30)]
    mixed = [ev(i, datetime.now(UTC)) for i in range(30)]
    mixed[7] = ev(7, now - timedelta(seconds=5))
    mixed[19] = ev(19, now + timedelta(seconds=5))
    batch = [e for pair in zip(on_time, mixed, strict=True) for e in pair]
    batch += [mixed[7], known]  # repeated in the chunk, written before
    sids = bus.publish_batch(batch, chunk_size=len(batch))
    assert client.zcard(bus.keys.index("cart")) == 0
    assert client.zcard(bus.keys.index("audit")) == 1  # by its own publish only
    index = bus.keys.index("order")
    want = {sid for e, sid in zip(batch, sids, strict=True)
            if e.topic == "order" and _late(sid, e.timestamp_us)}
    assert {s.decode() for s in client.zrange(index, 0, -1)} == want
    assert {sids[15], sids[39]} <= want  # mixed[7] and mixed[19]
    assert sids[-2] == sids[15] and client.xlen(bus.keys.stream("order")) == 30
