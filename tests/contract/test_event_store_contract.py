"""One behaviour suite for every EventStore: memory, Redis on fakeredis, Redis on redis-server,
PostgreSQL (a fresh table per test) and files (a fresh directory per test).

The acceptance case of issue #2 lives here: 10,000 events over 5 topics (several types,
event times partly out of order, ties), then every query must return exactly what a brute
force scan of what was published says.
"""

from __future__ import annotations

import itertools
import random
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import fakeredis
import msgspec
import pytest
import redis
from support import delete_namespace, redis_url, skip_or_fail
from support.cluster import delete_cluster_namespace, shared_cluster
from support.markers import REAL
from support.postgres import require_postgres, unique_table

from chi_redis import (
    Event,
    EventBus,
    EventStore,
    InvalidNameError,
    MemoryEventStore,
    ValidationError,
    event_type,
)
from chi_redis.events.event import _to_us
from chi_redis.events.names import glob_matches
from chi_redis.store.files import FileEventStore
from chi_redis.store.postgres import PostgresEventStore


@event_type("inventory.contract_restocked")
class Restocked(msgspec.Struct):
    sku: str
    qty: int


@dataclass
class Backend:
    """A store under test and how to put many events into it."""

    name: str
    store: EventStore
    put_many: Callable[[list[Event]], object]


BACKENDS = [
    "memory",
    "redis-fake",
    pytest.param("redis-real", marks=REAL.marks),
    pytest.param("redis-cluster", marks=REAL.marks),
    pytest.param("postgres", marks=pytest.mark.postgres),
    "file",
]


def make_backend(kind: str, ns: str) -> tuple[Backend, Callable[[], None]]:
    if kind == "postgres":
        pg = PostgresEventStore(require_postgres(), unique_table("contract"))
        pg.init()

        def drop() -> None:
            pg.drop()
            pg.close()

        return Backend(kind, pg, pg.store_many), drop
    if kind == "file":
        where = tempfile.mkdtemp(prefix="chi-files-")
        files = FileEventStore(where)

        def remove() -> None:
            files.close()
            shutil.rmtree(where, ignore_errors=True)

        return Backend(kind, files, files.store_many), remove
    if kind == "memory":
        memory = MemoryEventStore()

        def store_each(events: list[Event]) -> None:
            for e in events:
                memory.store(e)

        return Backend(kind, memory, store_each), lambda: None
    if kind == "redis-cluster":
        bus = EventBus.from_url(shared_cluster().url, namespace=ns)

        def drop_keys() -> None:
            delete_cluster_namespace(bus.client, ns)
            bus.close()

        return Backend(kind, bus.store, bus.publish_batch), drop_keys
    if kind == "redis-fake":
        client: redis.Redis = fakeredis.FakeRedis(
            server=fakeredis.FakeServer(version=(7, 0)), version=(7, 0)
        )
    else:
        client = redis.Redis.from_url(redis_url(), socket_connect_timeout=2, socket_timeout=60)
        try:
            client.ping()
        except redis.exceptions.RedisError as exc:
            skip_or_fail(f"no redis-server at {redis_url()}: {type(exc).__name__}")
    bus = EventBus(client, namespace=ns)

    def cleanup() -> None:
        if kind == "redis-real":
            delete_namespace(client, ns)
        client.close()

    return Backend(kind, bus.store, bus.publish_batch), cleanup


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, ns: str) -> Iterator[Backend]:
    b, cleanup = make_backend(request.param, ns)
    yield b
    cleanup()


# -- the 10,000-event acceptance data set -------------------------------------------------

BASE = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
TYPES = {
    "user": ["user.signed_up", "user.renamed", "user.deleted"],
    "order": ["order.placed", "order.paid", "order.shipped"],
    "billing": ["billing.invoice.sent", "billing.invoice.paid"],
    "inventory": ["inventory.contract_restocked"],
    "security": ["security.lockout", "audit.login"],  # audit.login: non-default topic
}
TOPICS = sorted(TYPES)


def make_events(n: int, seed: int = 2) -> list[Event]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        topic = TOPICS[rng.randrange(5)]
        type_ = rng.choice(TYPES[topic])
        ts = BASE + timedelta(microseconds=i * 997)
        roll = rng.random()
        if roll < 0.2:  # back-filled: up to an hour older
            ts -= timedelta(seconds=rng.randrange(3600), microseconds=rng.randrange(10**6))
        elif roll < 0.25 and events:  # a tie with an earlier event
            ts = rng.choice(events).timestamp
        data: object = (
            Restocked(sku=f"sku-{i % 97}", qty=i % 13)
            if type_ == "inventory.contract_restocked"
            else {"n": i, "name": f"item-{i}", "tags": ["a", "b"][: i % 3]}
        )
        events.append(
            Event(
                id=str(uuid.UUID(int=rng.getrandbits(128))),
                type=type_,
                topic=topic,
                data=data,
                metadata={"seq": i, "source": "contract"},
                timestamp=ts,
            )
        )
    return events


def by_time(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (_to_us(e.timestamp), e.id))


def brute_range(
    events: list[Event],
    start: datetime,
    end: datetime,
    topic: str | None = None,
    types: list[str] | None = None,
    limit: int | None = None,
) -> list[Event]:
    found = [
        e
        for e in events
        if start <= e.timestamp <= end
        and (topic is None or e.topic == topic)
        and (types is None or any(glob_matches(t, e.type) for t in types))
    ]
    found = by_time(found)
    return found if limit is None else found[:limit]


ACCEPTANCE_N = 10_000


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest) -> Iterator[tuple[Backend, list[Event]]]:
    ns = f"t{uuid.uuid4().hex[:12]}"
    b, cleanup = make_backend(request.param, ns)
    events = make_events(ACCEPTANCE_N)
    try:
        b.put_many(events)
        yield b, events
    finally:
        cleanup()


def test_acceptance_load_by_id(loaded: tuple[Backend, list[Event]]) -> None:
    b, events = loaded
    for e in events[::25]:
        assert b.store.load(e.id) == e
    assert b.store.load(str(uuid.uuid4())) is None
    restocked = next(e for e in events if e.type == "inventory.contract_restocked")
    assert isinstance(b.store.load(restocked.id).data, Restocked)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("offset", "limit"), [(0, 100), (0, ACCEPTANCE_N), (1500, 7), (1999, 5), (150, 0), (9000, 10)]
)
def test_acceptance_load_by_topic(
    loaded: tuple[Backend, list[Event]], offset: int, limit: int
) -> None:
    b, events = loaded
    for topic in TOPICS:
        expected = [e for e in events if e.topic == topic][offset : offset + limit]
        assert b.store.load_by_topic(topic, offset=offset, limit=limit) == expected
    assert b.store.load_by_topic("nosuchtopic") == []


def test_acceptance_page_by_topic_visits_every_event_once(
    loaded: tuple[Backend, list[Event]],
) -> None:
    b, events = loaded
    for topic in TOPICS:
        seen: list[Event] = []
        cursor: str | None = None
        while True:
            page, cursor = b.store.page_by_topic(topic, after=cursor, limit=333)
            if not page:
                break
            seen.extend(page)
        assert seen == [e for e in events if e.topic == topic]
        assert b.store.page_by_topic(topic, after=cursor, limit=10) == ([], cursor)


def range_cases(events: list[Event]) -> list[dict[str, object]]:
    ordered = by_time(events)
    lo, hi = ordered[0].timestamp, ordered[-1].timestamp
    mid = ordered[len(ordered) // 2].timestamp
    q1 = ordered[len(ordered) // 4].timestamp
    tie = next(a.timestamp for a, b in itertools.pairwise(ordered) if a.timestamp == b.timestamp)
    us = timedelta(microseconds=1)
    return [
        {"start": lo, "end": hi},
        {"start": lo - timedelta(days=1), "end": hi + timedelta(days=1)},
        {"start": q1, "end": mid},  # both bounds are event times: inclusive
        {"start": q1 + us, "end": mid - us},
        {"start": mid, "end": mid},
        {"start": tie, "end": tie},
        {"start": hi + us, "end": hi + timedelta(hours=1)},  # nothing
        {"start": mid, "end": q1},  # start after end: nothing
        {"start": q1, "end": mid, "topic": "order"},
        {"start": lo, "end": hi, "topic": "security"},
        {"start": lo, "end": hi, "topic": "nosuchtopic"},
        {"start": lo, "end": hi, "types": ["user.*"]},
        {"start": lo, "end": hi, "types": ["*.paid"]},
        {"start": q1, "end": hi, "types": ["billing.*.paid", "audit.login"]},
        {"start": lo, "end": hi, "types": ["user.signed_up", "order.paid"], "topic": "user"},
        {"start": lo, "end": hi, "types": ["*"]},  # one segment: only single-segment types
        {"start": lo, "end": hi, "limit": 1},
        {"start": lo, "end": hi, "limit": 777},
        {"start": q1, "end": hi, "limit": 50, "types": ["order.*"]},
        {"start": lo, "end": mid, "limit": 10, "topic": "inventory"},
        {"start": tie, "end": hi, "limit": 2},
        {"start": lo, "end": hi, "limit": 0},
    ]


def test_acceptance_time_range_matches_brute_force(loaded: tuple[Backend, list[Event]]) -> None:
    b, events = loaded
    for case in range_cases(events):
        got = b.store.load_by_time_range(**case)  # type: ignore[arg-type]
        expected = brute_range(events, **case)  # type: ignore[arg-type]
        assert [e.id for e in got] == [e.id for e in expected], case
        assert got == expected


# -- behaviour on a small log --------------------------------------------------------------


def ev(i: int, type_: str = "user.signed_up", **kw: object) -> Event:
    return Event(type=type_, data={"i": i}, **kw)  # type: ignore[arg-type]


def test_store_then_load_round_trips(backend: Backend) -> None:
    event = ev(1, metadata={"k": "v", "n": 2})
    backend.store.store(event)
    assert backend.store.load(event.id) == event
    assert backend.store.load(str(uuid.uuid4())) is None


def test_storing_the_same_event_twice_keeps_one(backend: Backend) -> None:
    event = ev(1)
    first = backend.store.store(event)
    assert backend.store.store(event) == first
    assert backend.store.load_by_topic("user") == [event]


def test_load_by_topic_is_oldest_first_with_offset_and_limit(backend: Backend) -> None:
    events = [ev(i) for i in range(30)]
    backend.put_many(events)
    assert backend.store.load_by_topic("user", limit=100) == events
    assert backend.store.load_by_topic("user", offset=10, limit=5) == events[10:15]
    assert backend.store.load_by_topic("user", offset=28, limit=5) == events[28:]
    assert backend.store.load_by_topic("user", offset=30) == []
    assert backend.store.load_by_topic("user", limit=0) == []
    assert backend.store.load_by_topic("order") == []


def test_page_by_topic_cursor(backend: Backend) -> None:
    events = [ev(i) for i in range(10)]
    backend.put_many(events)
    page, cursor = backend.store.page_by_topic("user", limit=4)
    assert page == events[:4] and cursor is not None
    page, cursor2 = backend.store.page_by_topic("user", after=cursor, limit=4)
    assert page == events[4:8]
    page, cursor3 = backend.store.page_by_topic("user", after=cursor2, limit=4)
    assert page == events[8:]
    assert backend.store.page_by_topic("user", after=cursor3) == ([], cursor3)
    assert backend.store.page_by_topic("user", limit=0) == ([], None)
    assert backend.store.page_by_topic("order") == ([], None)


def test_time_range_bounds_are_inclusive(backend: Backend) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    us = timedelta(microseconds=1)
    events = [ev(i, timestamp=t0 + i * timedelta(seconds=1)) for i in range(5)]
    backend.put_many(events)
    s = backend.store
    assert s.load_by_time_range(t0 + timedelta(seconds=1), t0 + timedelta(seconds=3)) == events[1:4]
    assert s.load_by_time_range(t0 + timedelta(seconds=1) + us, t0 + timedelta(seconds=3) - us) == [
        events[2]
    ]
    assert s.load_by_time_range(t0, t0) == [events[0]]
    assert s.load_by_time_range(t0 + timedelta(seconds=3), t0) == []


def test_time_range_spans_topics_and_orders_by_time_then_id(backend: Backend) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    events = [
        ev(1, "order.placed", timestamp=t0 + timedelta(seconds=2)),
        ev(2, "user.signed_up", timestamp=t0 + timedelta(seconds=1)),
        ev(3, "user.renamed", timestamp=t0 + timedelta(seconds=2)),
        ev(4, "billing.paid", timestamp=t0),
    ]
    backend.put_many(events)
    got = backend.store.load_by_time_range(t0, t0 + timedelta(seconds=5))
    assert got == by_time(events)
    assert (
        backend.store.load_by_time_range(t0, t0 + timedelta(seconds=5), limit=2)
        == by_time(events)[:2]
    )
    assert backend.store.load_by_time_range(
        t0, t0 + timedelta(seconds=5), types=["user.*"]
    ) == by_time(events[1:3])
    assert backend.store.load_by_time_range(t0, t0 + timedelta(seconds=5), topic="order") == [
        events[0]
    ]


def test_delete_removes_the_event_from_every_query(backend: Backend) -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    events = [ev(i, timestamp=t0 + timedelta(seconds=i)) for i in range(5)]
    backend.put_many(events)
    victim = events[2]
    assert backend.store.delete(victim.id) is True
    assert backend.store.delete(victim.id) is False
    assert backend.store.delete(str(uuid.uuid4())) is False
    assert backend.store.load(victim.id) is None
    rest = [e for e in events if e is not victim]
    assert backend.store.load_by_topic("user") == rest
    assert backend.store.load_by_time_range(t0, t0 + timedelta(hours=1)) == rest
    # Offsets count from the oldest entry still kept: the delete shifted them.
    assert backend.store.load_by_topic("user", offset=2, limit=1) == [events[3]]


def test_deleted_event_can_be_stored_again(backend: Backend) -> None:
    event = ev(1)
    backend.store.store(event)
    backend.store.delete(event.id)
    backend.store.store(event)
    assert backend.store.load(event.id) == event
    assert backend.store.load_by_topic("user") == [event]


def test_invalid_query_arguments_are_validation_errors(backend: Backend) -> None:
    now = datetime.now(UTC)
    naive = datetime(2024, 1, 1)
    s = backend.store
    with pytest.raises(ValidationError) as info:
        s.load_by_time_range(naive, now)
    assert info.value.field == "start"
    with pytest.raises(ValidationError) as info:
        s.load_by_time_range(now, naive)
    assert info.value.field == "end"
    with pytest.raises(ValidationError):
        s.load_by_time_range(now, now, limit=-1)
    with pytest.raises(ValidationError):
        s.load_by_topic("user", offset=-1)
    with pytest.raises(ValidationError):
        s.load_by_topic("user", limit=-5)
    with pytest.raises(InvalidNameError):
        s.load_by_topic("User")
    with pytest.raises(InvalidNameError):
        s.load_by_time_range(now, now, topic="a:b")
    with pytest.raises(InvalidNameError):
        s.load_by_time_range(now, now, types=["us*"])


def test_stores_satisfy_the_protocol(backend: Backend) -> None:
    assert isinstance(backend.store, EventStore)
