"""The batch archive loop (``chi_redis.ops.archive_loop``, ``chi-redis archive run``): every
event stored once, across a ``kill -9`` of the command mid-stream; undecodable entries are
dead-lettered without wedging it; the type filter; the file store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from support import REDIS_URL, stays, wait_until
from support.postgres import require_postgres, unique_table
from support.processes import ROOT, TESTS, clean_env

from chi_redis import Event, EventBus
from chi_redis.ops.archive import ARCHIVE_SUBSCRIPTION
from chi_redis.ops.archive_loop import ArchiveLoop
from chi_redis.store.files import FileEventStore
from chi_redis.store.postgres import PostgresEventStore

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def pg() -> Iterator[PostgresEventStore]:
    store = PostgresEventStore(require_postgres(), unique_table("archloop"))
    store.init()
    try:
        yield store
    finally:
        store.drop()
        store.close()


class Running:
    """An :class:`ArchiveLoop` run in a thread, stopped (and joined) on exit."""

    def __init__(self, loop: ArchiveLoop) -> None:
        self.loop = loop
        self.thread = threading.Thread(target=loop.run, daemon=True)

    def __enter__(self) -> ArchiveLoop:
        self.thread.start()
        return self.loop

    def __exit__(self, *exc: object) -> None:
        self.loop.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the archive loop did not stop"


def _pending(client: redis.Redis, stream: str) -> int:
    try:
        return int(client.xpending(stream, ARCHIVE_SUBSCRIPTION)["pending"])
    except redis.ResponseError:  # the group does not exist yet
        return 0


def _id_counts(table: str) -> dict[str, int]:
    with psycopg.connect(require_postgres()) as conn:
        rows = conn.execute(f"SELECT id, count(*) FROM {table} GROUP BY id").fetchall()
    return dict(rows)


def test_loop_stores_every_event_once_and_picks_up_new_topics(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore,
) -> None:
    bus = EventBus(real_client, namespace=ns)
    first = [Event(type="order.placed", data={"i": i}) for i in range(1_200)]
    bus.publish_batch(first)
    loop = ArchiveLoop(bus, pg, batch_size=100, block_ms=50, refresh_ms=200)
    with Running(loop):
        wait_until(lambda: pg.count() >= len(first), timeout=60)
        later = [Event(type="user.created", data={"i": i}) for i in range(300)]
        bus.publish_batch(later)  # a topic that appears while the loop runs
        wait_until(lambda: pg.count() >= len(first) + len(later), timeout=60)
        wait_until(lambda: _pending(real_client, bus.keys.stream("user")) == 0, timeout=30)
    assert set(_id_counts(pg.table_name)) == {e.id for e in first + later}
    assert set(_id_counts(pg.table_name).values()) == {1}
    assert pg.load(first[5].id) == first[5]
    assert _pending(real_client, bus.keys.stream("order")) == 0
    assert real_client.hexists(bus.keys.subs(), ARCHIVE_SUBSCRIPTION)  # stats see its lag
    assert loop.stats.stored == len(first) + len(later)


class GatedStore:
    """A store whose ``store_many`` waits until the test opens the gate; keeps batch sizes."""

    def __init__(self, inner: PostgresEventStore) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.sizes: list[int] = []

    def store(self, event: Event) -> str:
        return self.inner.store(event)

    def store_many(self, events: list[Event]) -> int:
        assert self.gate.wait(60), "the test never opened the gate"
        self.sizes.append(len(events))
        return self.inner.store_many(events)


def test_loop_reads_on_while_the_store_is_busy_and_acks_only_what_is_stored(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore,
) -> None:
    """While a batch is being stored the loop reads and decodes the next ones (up to four
    reads' worth, handed over as one store call), and acknowledges nothing before its
    store call returned."""
    bus = EventBus(real_client, namespace=ns)
    events = [Event(type="order.placed", data={"i": i}) for i in range(1_000)]
    bus.publish_batch(events)
    stream = bus.keys.stream("order")
    store = GatedStore(pg)
    loop = ArchiveLoop(bus, store, batch_size=100, block_ms=50)  # type: ignore[arg-type]
    before = sys.getswitchinterval()
    with Running(loop):
        # The first read is in the store thread; four more are read and held.
        wait_until(lambda: loop.stats.read == 500, timeout=60)
        # Nothing more may be read nor acked while the store is stuck.
        assert stays(lambda: loop.stats.read == 500
                     and _pending(real_client, stream) == 500, 0.3)
        assert pg.count() == 0
        assert sys.getswitchinterval() == loop.switch_interval == 0.001  # while it runs
        store.gate.set()
        wait_until(lambda: pg.count() >= len(events), timeout=60)
        wait_until(lambda: _pending(real_client, stream) == 0, timeout=30)
    assert sys.getswitchinterval() == before
    assert store.sizes[:2] == [100, 400]
    assert max(store.sizes) <= 400 and sum(store.sizes) == len(events)
    assert set(_id_counts(pg.table_name).values()) == {1}
    assert loop.stats.stored == len(events)


def test_loop_dead_letters_an_undecodable_entry_and_goes_on(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore,
) -> None:
    bus = EventBus(real_client, namespace=ns)
    stream = bus.keys.stream("order")
    bus.publish(Event(type="order.placed", data={"i": 0}))
    real_client.xadd(stream, {"id": "bad-1", "type": "order.placed", "ts": "x", "data": b"\xc1"})
    real_client.xadd(stream, {"garbage": "no fields of an event"})
    after = [Event(type="order.placed", data={"i": i}) for i in range(1, 50)]
    bus.publish_batch(after)
    loop = ArchiveLoop(bus, pg, batch_size=10, block_ms=50)
    with Running(loop):
        wait_until(lambda: pg.count() >= 50, timeout=60)
        wait_until(lambda: _pending(real_client, stream) == 0, timeout=30)
    assert pg.count() == 50
    assert loop.stats.dead_lettered == 2
    assert real_client.xlen(bus.keys.dlq(ARCHIVE_SUBSCRIPTION)) == 2


def test_loop_type_filter_and_crash_recovery_of_its_own_pending_entries(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore,
) -> None:
    bus = EventBus(real_client, namespace=ns)
    events = [Event(type=t, data={"i": i}) for i, t in
              enumerate(["user.created", "order.placed", "user.renamed", "billing.sent"] * 25)]
    bus.publish_batch(events)
    stream = bus.keys.stream("user")
    # A crashed loop: it read a batch (pending under its name) and never stored it.
    crashed = ArchiveLoop(bus, pg, types=["user.*"], consumer="arch-1")
    crashed.refresh()
    real_client.xreadgroup(ARCHIVE_SUBSCRIPTION, "arch-1", {stream: ">"}, count=20)
    assert _pending(real_client, stream) == 20
    loop = ArchiveLoop(bus, pg, types=["user.*"], consumer="arch-1", block_ms=50)
    with Running(loop):
        wait_until(lambda: pg.count() >= 50, timeout=60)
        wait_until(lambda: _pending(real_client, stream) == 0, timeout=30)
    assert sorted(_id_counts(pg.table_name)) == sorted(e.id for e in events if e.topic == "user")
    assert pg.count() == 50


def test_loop_takes_over_a_dead_consumers_batch_into_the_file_store(
    real_client: redis.Redis, ns: str, tmp_path: Path,
) -> None:
    bus = EventBus(real_client, namespace=ns)
    events = [Event(type="order.placed", data={"i": i}) for i in range(300)]
    bus.publish_batch(events)
    stream = bus.keys.stream("order")
    with FileEventStore(tmp_path / "archive") as store:
        ArchiveLoop(bus, store, consumer="dead").refresh()
        real_client.xreadgroup(ARCHIVE_SUBSCRIPTION, "dead", {stream: ">"}, count=120)
        loop = ArchiveLoop(bus, store, lease_ms=300, block_ms=50, batch_size=64)
        with Running(loop):
            wait_until(lambda: store.count() >= len(events), timeout=60)
            wait_until(lambda: _pending(real_client, stream) == 0, timeout=30)
        assert store.count() == len(events)
        assert [store.load(e.id) for e in events] == events
    with FileEventStore(tmp_path / "archive", read_only=True) as reopened:
        assert reopened.count() == len(events)


def _config(path: Path, dsn: str, table: str) -> Path:
    path.write_text(
        "events:\n  store:\n    enabled: true\n    type: database\n"
        f"    database: {{dsn: '{dsn}', table_name: {table}}}\n"
        "    archive: {batch_size: 200}\n")
    return path


def _archive_run(tmp: Path, ns: str, config: Path, n: int) -> subprocess.Popen[bytes]:
    env = clean_env(CHI_REDIS_URL=REDIS_URL, CHI_NAMESPACE=ns, CHI_CONFIG=str(config),
                    PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]),
                    PYTHONUNBUFFERED="1")
    log = open(tmp / f"archive-{n}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "chi_redis.cli", "archive", "run", "--block-ms", "100",
             "--consumer", f"arch-{n}", "--lease-ms", "1500"],
            env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    finally:
        log.close()


def test_archive_run_killed_with_sigkill_mid_stream_stores_each_event_once(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore, tmp_path: Path,
) -> None:
    """``chi-redis archive run`` kill -9-ed while 20,000 events stream in, then a new one
    (another consumer name: it takes the dead one's batch over after the lease): every id is
    in the table exactly once; SIGTERM then exits 0 with nothing pending."""
    config = _config(tmp_path / "chi.yaml", require_postgres(), pg.table_name)
    bus = EventBus(real_client, namespace=ns)
    stream = bus.keys.stream("order")
    n, chunk = 20_000, 250
    events = [Event(type="order.placed", data={"i": i}) for i in range(n)]
    bus.publish_batch(events[:chunk])
    published = [chunk]
    stop = threading.Event()

    def publish() -> None:
        while published[0] < n and not stop.is_set():
            bus.publish_batch(events[published[0] : published[0] + chunk])
            published[0] += chunk
            time.sleep(0.01)

    publisher = threading.Thread(target=publish, daemon=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_archive_run(tmp_path, ns, config, 1))
        publisher.start()
        wait_until(lambda: pg.count() >= 2000 and _pending(real_client, stream) > 0, 120,
                   interval=0.01, message="archiving, a batch read and not yet acked")
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(timeout=30)
        stored_at_kill = pg.count()
        assert stored_at_kill < n
        procs.append(_archive_run(tmp_path, ns, config, 2))
        publisher.join(timeout=120)
        assert published[0] >= n
        wait_until(lambda: pg.count() >= n, 180, interval=0.1, message="every event archived")
        wait_until(lambda: _pending(real_client, stream) == 0, 60, message="all acked")
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=30) == 0
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
    counts = _id_counts(pg.table_name)
    assert set(counts) == {e.id for e in events}  # nothing lost
    assert set(counts.values()) == {1}  # nothing twice


def test_loop_dead_letters_an_event_the_store_refuses_and_stores_the_rest(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore,
) -> None:
    """A ``\\u0000`` in a JSON string is refused by JSONB: the batch holding it is split
    until it stands alone, the rest of the batch is stored, and it alone is dead-lettered
    (reason ``store``) and acked, once; in a large batch (COPY) and a small one (INSERT)."""
    bus = EventBus(real_client, namespace=ns)
    stream = bus.keys.stream("order")
    good = [Event(type="order.placed", data={"i": i}) for i in range(300)]
    poison = [Event(type="order.placed", data={"s": f"nul \x00 {i}"}) for i in range(2)]
    bus.publish_batch([*good[:150], poison[0], *good[150:]])  # one read of 100, one of 300
    loop = ArchiveLoop(bus, pg, batch_size=100, block_ms=50)
    with Running(loop):
        wait_until(lambda: pg.count() >= len(good), timeout=60)
        wait_until(lambda: _pending(real_client, stream) == 0, timeout=30)
        bus.publish_batch([Event(type="order.placed", data={"j": 0}), poison[1]])
        wait_until(lambda: pg.count() >= len(good) + 1, timeout=60)
        wait_until(lambda: _pending(real_client, stream) == 0, timeout=30)
        assert loop.stats.dead_lettered == 2
    assert set(_id_counts(pg.table_name).values()) == {1}
    assert pg.count() == len(good) + 1
    letters = bus.dead_letters(ARCHIVE_SUBSCRIPTION)
    assert [(d.event_id, d.reason, d.type, d.topic) for d in letters] == [
        (p.id, "store", "order.placed", "order") for p in poison]
    assert letters[0].error_type == "DatabaseError" and "Unicode" in letters[0].error
    assert letters[0].body  # the entry's fields: redrivable


def test_loop_keeps_retrying_while_the_store_itself_fails_and_dead_letters_nothing(
    real_client: redis.Redis, ns: str, pg: PostgresEventStore,
) -> None:
    """A store error that is not about the data (the table is gone) keeps the batch:
    nothing is acked or dead-lettered, and once the table is back everything is stored."""
    bus = EventBus(real_client, namespace=ns)
    stream = bus.keys.stream("order")
    pg.drop()
    events = [Event(type="order.placed", data={"i": i}) for i in range(40)]
    bus.publish_batch(events)
    loop = ArchiveLoop(bus, pg, batch_size=100, block_ms=50)
    with Running(loop):
        wait_until(lambda: loop.stats.read == len(events), timeout=60)
        assert stays(lambda: _pending(real_client, stream) == len(events), 1.0)
        assert loop.stats.dead_lettered == 0
        pg.init()
        wait_until(lambda: pg.count() == len(events), timeout=60)
        wait_until(lambda: _pending(real_client, stream) == 0, timeout=30)
    assert loop.stats.dead_lettered == 0
    assert real_client.xlen(bus.keys.dlq(ARCHIVE_SUBSCRIPTION)) == 0
