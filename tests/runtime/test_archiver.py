"""The archiver copies events into PostgreSQL once each, across a worker restart (in-process
Workers, and a real ``dramatiq chi_redis.worker`` process killed with SIGKILL); a replay from
the archive delivers a range Redis retention already trimmed."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import redis
from support import REDIS_URL, in_process_runtime, wait_until
from support.postgres import require_postgres, unique_table
from support.processes import Workers, wait_ready

from chi_redis import Event, EventBus
from chi_redis.ops.archive import ARCHIVE_SUBSCRIPTION, BatchWriter, install_archiver
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


def test_batch_writer_fails_only_the_event_the_store_refuses(pg: PostgresEventStore) -> None:
    """Events written together from many threads share a ``store_many`` batch; the one
    JSONB refuses (a ``\\u0000``) fails its own write, the others are stored."""
    writer = BatchWriter(pg, batch_size=500)
    gate = threading.Event()
    events = [Event(type="order.placed", data={"i": i}) for i in range(20)]
    events[7] = Event(type="order.placed", data={"s": "nul \x00"})
    errors: dict[int, BaseException] = {}

    def write(i: int) -> None:
        gate.wait()
        try:
            writer.write(events[i])
        except Exception as exc:
            errors[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(events))]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(timeout=60)
    assert list(errors) == [7]
    assert getattr(errors[7], "data_error", False)
    assert pg.count() == len(events) - 1
    assert pg.load(events[7].id) is None and pg.load(events[8].id) == events[8]


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


def _config(path: Path, dsn: str, table: str, batch_size: int) -> Path:
    path.write_text(
        "events:\n  store:\n    enabled: true\n    type: database\n"
        f"    database: {{dsn: '{dsn}', table_name: {table}}}\n"
        f"    archive: {{enabled: true, batch_size: {batch_size}}}\n")
    return path


def _pending(client: redis.Redis, stream: str) -> int:
    try:
        return int(client.xpending(stream, ARCHIVE_SUBSCRIPTION)["pending"])
    except redis.ResponseError:  # the group does not exist yet
        return 0


def test_archiver_in_a_worker_process_killed_with_sigkill_stores_each_event_once(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore, tmp_path: Path,
) -> None:
    """A real ``dramatiq chi_redis.worker`` with the archiver from its config, kill -9-ed
    while events stream in and restarted: every event is in the table exactly once."""
    config = _config(tmp_path / "chi.yaml", require_postgres(), pg.table_name, 200)
    bus = EventBus(real_client, namespace=ns)
    stream = bus.keys.stream("order")
    n, chunk = 20_000, 250
    events = [Event(type="order.placed", data={"i": i}) for i in range(n)]
    bus.publish_batch(events[:chunk])  # the topic exists when the worker boots
    workers = Workers(tmp_path, REDIS_URL, ns)
    published = [chunk]
    stop = threading.Event()

    def publish() -> None:
        while published[0] < n and not stop.is_set():
            bus.publish_batch(events[published[0] : published[0] + chunk])
            published[0] += chunk
            time.sleep(0.01)

    publisher = threading.Thread(target=publish, daemon=True)
    try:
        first = workers.start("runtime.proc_archive", threads=4, CHI_CONFIG=str(config))
        wait_ready(first)
        publisher.start()
        wait_until(lambda: pg.count() >= 2000 and _pending(real_client, stream) > 0, 120,
                   interval=0.02, message="the archiver under way, messages in flight")
        children = first.children()
        assert children, "dramatiq forked no worker child"
        for pid in children:  # kill -9 the worker child (ours), mid-stream
            os.kill(pid, signal.SIGKILL)
        in_flight = _pending(real_client, stream)
        stored_at_kill = pg.count()
        first.stop()  # its master exits after its child died; the session is reaped
        assert stored_at_kill < n and in_flight > 0
        second = workers.start("runtime.proc_archive", threads=4, CHI_CONFIG=str(config))
        wait_ready(second)
        publisher.join(timeout=120)
        assert published[0] >= n
        wait_until(lambda: pg.count() >= n, 180, interval=0.1,
                   message=f"every event archived (logs: {workers.logs()[-2000:]})")
        wait_until(lambda: _pending(real_client, stream) == 0, 60, message="all acked")
    finally:
        stop.set()
        workers.stop()
    with psycopg.connect(require_postgres()) as conn:
        rows = conn.execute(f"SELECT id, count(*) FROM {pg.table_name} GROUP BY id").fetchall()
    counts = dict(rows)
    assert set(counts) == {e.id for e in events}  # nothing lost
    assert set(counts.values()) == {1}  # nothing twice
    print(f"\nkill -9 with {in_flight} messages in flight, {stored_at_kill} stored at the kill")
