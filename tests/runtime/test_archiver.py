"""The archiver copies events into PostgreSQL once each, across a worker restart; a replay
from the archive delivers a range Redis retention already trimmed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from support import in_process_runtime, wait_until
from support.database import require_postgres, unique_table

from chi_redis import Event, EventBus
from chi_redis.ops.archive import install_archiver
from chi_redis.store.postgres import PostgresEventStore

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def pg() -> Iterator[PostgresEventStore]:
    store = PostgresEventStore(require_postgres(), unique_table("archive"))
    store.init()
    try:
        yield store
    finally:
        store.drop()
        store.close()


def test_archiver_stores_each_event_once_across_a_worker_restart(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    t0 = datetime(2024, 6, 1, tzinfo=UTC)
    events = [Event(type=("order.placed" if i % 3 else "user.created"), data={"i": i},
                    timestamp=t0 + timedelta(milliseconds=i)) for i in range(600)]
    bus = EventBus(real_client, namespace=ns)
    bus.publish_batch(events[:300])
    with in_process_runtime(bus, monkeypatch) as rt:
        install_archiver(bus, pg, batch_size=50)
        first = rt.worker(rt.broker(bus))
        wait_until(lambda: pg.count() >= 100, timeout=60)
        rt.stop(first)  # the restart: in-flight messages are handed back, then redelivered
        bus.publish_batch(events[300:])
        second_bus = rt.new_bus()
        install_archiver(second_bus, pg, batch_size=50)
        rt.worker(rt.broker(second_bus))
        wait_until(lambda: pg.count() >= len(events), timeout=120)
    assert pg.count() == len(events)
    got = pg.load_by_time_range(t0, t0 + timedelta(hours=1))
    assert [e.id for e in got] == [e.id for e in events]
    assert got == events


def test_archiver_filter_selects_types(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = EventBus(real_client, namespace=ns)
    events = [Event(type=t, data={"i": i}) for i, t in
              enumerate(["user.created", "order.placed", "user.renamed", "billing.sent"] * 5)]
    bus.publish_batch(events)
    with in_process_runtime(bus, monkeypatch) as rt:
        install_archiver(bus, pg, types=["user.*"])
        rt.worker(rt.broker(bus))
        wait_until(lambda: pg.count() >= 10, timeout=60)
    assert sorted(e.id for e in pg.load_by_topic("user", limit=100)) == sorted(
        e.id for e in events if e.topic == "user")
    assert pg.count() == 10


def test_replay_from_the_archive_delivers_a_range_retention_trimmed(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    import msgspec

    from chi_redis.ops.archive_replay import replay_archive
    from chi_redis.ops.retention import Policy, trim_topic
    from chi_redis.ops.targets import PrintTarget, QueueTarget
    from chi_redis.ops.timeparse import TimePoint
    from chi_redis.store.history import str_fields

    t0 = datetime(2024, 7, 1, tzinfo=UTC)
    events = [Event(type="order.placed", data={"i": i}, timestamp=t0 + timedelta(seconds=i))
              for i in range(100)]
    bus = EventBus(real_client, namespace=ns)
    bus.publish_batch(events)
    with in_process_runtime(bus, monkeypatch) as rt:
        install_archiver(bus, pg)
        rt.worker(rt.broker(bus))
        wait_until(lambda: pg.count() >= len(events), timeout=60)
    trim_topic(bus, "order", Policy(max_len=0))
    assert real_client.xlen(bus.keys.stream("order")) == 0  # Redis no longer holds them
    since = TimePoint(events[10].timestamp_us)
    until = TimePoint(events[59].timestamp_us)
    out = io.BytesIO()
    report = replay_archive(pg, PrintTarget(bus, out), bus.codec, topics=["order"],
                            since=since, until=until)
    assert report.delivered == 50
    printed = [msgspec.json.decode(line) for line in out.getvalue().splitlines()]
    assert [p["id"] for p in printed] == [e.id for e in events[10:60]]
    assert printed[0]["data"] == {"i": 10}
    target = QueueTarget(bus, "order-audit")
    report = replay_archive(pg, target, bus.codec, since=since, until=until)
    assert report.delivered == 50
    queued = real_client.xrange(bus.keys.queue("order-audit"))
    assert len(queued) == 50
    first = msgspec.msgpack.decode(str_fields(queued[0][1])["message"]
                                   if "message" in str_fields(queued[0][1])
                                   else next(iter(str_fields(queued[0][1]).values())))
    assert first["options"]["replay"] is True
    assert first["args"][1]["id"] == events[10].id.encode()
