"""F7: the transactional outbox under a PostgreSQL crash, a relay killed mid-batch, Redis
down, and two relays at once; own PostgreSQL (``pg_ctl stop -m immediate``) and own Redis.

The history (support.history) logs a publish ``ok`` when the producer's COMMIT returned,
``info`` when the COMMIT raised (outcome unknown).  Where the fault is in the relay, the
topic stream itself is the consumer (:func:`stream_commits`: one commit per entry, so a
duplicate entry is a duplicate); F7c also runs a real subscription with ``dedupe`` to count
side effects.  Cases the outbox suite already covers (tests/outbox): a PostgreSQL restart
under a running relay, three relays sharing 30 000 rows, the lag gauge (tests/observe).
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from support import in_process_runtime, wait_until
from support.figures import record
from support.history import History, record_commit
from support.postgres import PostgresServer
from support.relays import RelayProcesses
from support.servers import RedisServer

from chi_redis import Event, EventBus, outbox
from chi_redis.outbox.relay import CRASH_AFTER_PUBLISH_ENV, Relay

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
TABLE = "chi_outbox"


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def table(pg: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh outbox table of this test (the own server may have been crashed by another)."""
    if not pg.started:
        pg.start()
    name = f"ob_{request.node.name[5:30]}".lower()
    with psycopg.connect(pg.dsn) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        outbox.init(conn, name)
    yield name


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> History:
    h = History(tmp_path / "history")
    monkeypatch.setenv("CHI_TEST_HISTORY", str(h.folder))
    return h


def produce(dsn: str, table: str, history: History, events: list[Event]) -> int:
    """Commit one outbox row per event (autocommit); the history logs each COMMIT's outcome.
    Stops at the first error (the crash); how many were committed."""
    done = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for e in events:
            history.invoke(e.id)
            try:
                outbox.add(conn, e, table=table)
            except psycopg.OperationalError:
                history.info(e.id)  # the COMMIT may or may not have happened
                return done
            history.ok(e.id)
            done += 1
    return done


def ledger(n: int) -> list[Event]:
    return [Event(type="ledger.posted", data={"n": i}) for i in range(n)]


def stream_commits(client: redis.Redis, bus: EventBus, topics: list[str]) -> Counter[str]:
    """Log one commit per stream entry (the stream is the consumer); entries per event id."""
    seen: Counter[str] = Counter()
    for t in topics:
        for sid, fields in client.xrange(bus.keys.stream(t)):
            record_commit(fields[b"id"].decode(), sid.decode())
            seen[fields[b"id"].decode()] += 1
    return seen


def unpublished(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE published_at IS NULL").fetchone()
    assert row is not None
    return int(row[0])


def crash_and_restart(pg: PostgresServer) -> float:
    """``pg_ctl stop -m immediate`` (no checkpoint: recovery replays the WAL), start again;
    the seconds from the start command until it accepts connections."""
    pg.stop("immediate")
    began = time.monotonic()
    pg.start()  # pg_ctl -w: returns once the server accepts connections
    return round(time.monotonic() - began, 3)


def test_f7a_commits_acknowledged_before_a_crash_are_all_relayed(
        pg: PostgresServer, table: str, own_redis: RedisServer, history: History) -> None:
    events = ledger(300)
    assert produce(pg.dsn, table, history, events) == 300
    ready_s = crash_and_restart(pg)
    bus = EventBus(own_redis.client(), namespace="f7a")
    relay = Relay(pg.dsn, bus, table=table, batch_size=100)
    try:
        assert relay.stats().backlog == 300
        assert relay.run(once=True) == 300
    finally:
        relay.close()
    stream_commits(bus.client, bus, ["ledger"])
    verdict = history.check()
    record("F7a-outbox-pg-crash-before-relay", **verdict.figures(), pg_restart_to_ready_s=ready_s)
    verdict.assert_nothing_lost()
    assert verdict.committed == 300 and unpublished(pg.dsn, table) == 0


def test_f7b_crash_during_producer_commits_then_retry_leaves_one_row_each(
        pg: PostgresServer, table: str, own_redis: RedisServer, history: History) -> None:
    events = ledger(20_000)
    result: list[int] = []
    producer = threading.Thread(target=lambda: result.append(
        produce(pg.dsn, table, history, events)))
    producer.start()
    wait_until(lambda: history.outcomes()["ok"] >= 200, 60, "200 producer commits")
    pg.stop("immediate")  # in the middle of the producer's commits
    producer.join(timeout=60)
    assert result and result[0] < len(events), "the producer never saw the crash"
    unknown = events[result[0]]  # the one whose COMMIT raised: outcome unknown
    assert history.outcomes()["info"] == 1, history.outcomes()
    pg.start()
    # Retry the event whose COMMIT raised, with the same id (the idempotency key): the
    # unique id keeps a single row whether or not the first COMMIT happened.
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        try:
            outbox.add(conn, unknown, table=table)
            retried = "inserted"
        except psycopg.errors.UniqueViolation:
            retried = "already committed"
        history.ok(unknown.id)
        rows = conn.execute(f"SELECT id, count(*) FROM {table} GROUP BY id").fetchall()
    assert all(n == 1 for _id, n in rows) and len(rows) == result[0] + 1
    bus = EventBus(own_redis.client(), namespace="f7b")
    relay = Relay(pg.dsn, bus, table=table, batch_size=500)
    try:
        relay.run(once=True)
    finally:
        relay.close()
    stream_commits(bus.client, bus, ["ledger"])
    verdict = history.check()
    record("F7b-outbox-pg-crash-mid-commit", **verdict.figures(), retry=retried,
           committed_before_crash=result[0])
    verdict.assert_nothing_lost()


def test_f7c_relay_killed_after_publish_before_mark_no_duplicate_effects(
        pg: PostgresServer, table: str, own_redis: RedisServer, history: History,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (Was tests/outbox/test_relay_processes.py::test_kill_9_between_publish_and_mark…)
    events = ledger(1000)
    assert produce(pg.dsn, table, history, events) == 1000
    relays = RelayProcesses(tmp_path, "f7c", own_redis.url)
    bus = EventBus(own_redis.client(), namespace="f7c")
    effects: Counter[str] = Counter()
    lock = threading.Lock()

    @bus.subscribe("ledger-effects", topics=["ledger"], start="earliest", dedupe=True)
    def apply(event: Event) -> None:
        with lock:
            effects[event.id] += 1
        record_commit(event.id)

    try:
        with in_process_runtime(bus, monkeypatch) as rt:
            rt.worker(rt.broker())
            # The hook stops the relay (SIGSTOP) after its first batch's XADDs and before
            # the UPDATE's COMMIT; there it gets kill -9.
            crashing = relays.start(pg.dsn, table, "--once", "--batch-size", "300",
                                    **{CRASH_AFTER_PUBLISH_ENV: "stop"})
            wait_until(lambda: psutil.Process(crashing.proc.pid).status() ==
                       psutil.STATUS_STOPPED, 60, "the relay stopped between XADD and mark")
            crashing.proc.send_signal(signal.SIGKILL)
            assert crashing.proc.wait(timeout=60) == -signal.SIGKILL
            first = bus.client.xlen(bus.keys.stream("ledger"))
            assert first == 300 and unpublished(pg.dsn, table) == 1000
            again = relays.start(pg.dsn, table, "--once", "--batch-size", "300")
            assert again.proc.wait(timeout=120) == 0, again.output()
            assert again.published() == 1000  # the killed batch was sent again
            wait_until(history.committed_all_ok, 60, "every event handled")
    finally:
        relays.stop()
    entries = Counter(f[b"id"].decode() for _s, f in bus.client.xrange(
        bus.keys.stream("ledger")))
    verdict = history.check()
    dup_entries = sum(n - 1 for n in entries.values())
    dup_effects = sum(n - 1 for n in effects.values())
    record("F7c-outbox-relay-killed-mid-batch", **verdict.figures(), batch=300,
           duplicate_stream_entries=dup_entries, duplicated_effects=dup_effects,
           resent=300)
    verdict.assert_nothing_lost()
    assert dup_entries <= 300 and dup_entries == 0  # the publish script skips known ids
    assert dup_effects == 0 and unpublished(pg.dsn, table) == 0
    assert list(entries) == [e.id for e in events]  # one relay: in commit order


def test_f7d_redis_down_rows_stay_pending_and_drain_after(
        pg: PostgresServer, table: str, own_redis: RedisServer, history: History,
        tmp_path: Path) -> None:
    relays = RelayProcesses(tmp_path, "f7d", own_redis.url)
    bus = EventBus(own_redis.client(), namespace="f7d")
    stats = Relay(pg.dsn, bus, table=table)
    try:
        relay = relays.start(pg.dsn, table, "--poll-interval", "0.2")
        wait_until(relay.ready, 60, "relay started")
        own_redis.kill()
        events = ledger(400)
        assert produce(pg.dsn, table, history, events) == 400
        wait_until(lambda: "(retrying)" in relay.output(), 60, "the relay saw Redis down")
        outage_began = time.monotonic()
        wait_until(lambda: stats.stats().lag_s >= 1.0, 30, "outbox lag of a second")
        down = stats.stats()
        assert down.backlog == 400 and relay.alive()
        own_redis.start()
        outage_s = time.monotonic() - outage_began
        retries = relay.output().count("(retrying)")
        back = time.monotonic()
        wait_until(lambda: unpublished(pg.dsn, table) == 0, 60, "outbox drained")
        catch_up_s = round(time.monotonic() - back, 3)
        assert relay.terminate() == 0, relay.output()
    finally:
        stats.close()
        relays.stop()
    stream_commits(bus.client, bus, ["ledger"])
    verdict = history.check()
    record("F7d-outbox-redis-down", **verdict.figures(), max_lag_s=round(down.lag_s, 3),
           outage_s=round(outage_s, 2), relay_retries=retries, catch_up_s=catch_up_s)
    verdict.assert_nothing_lost()
    assert stats.stats().lag_s == 0.0
    # Backoff doubles up to 5 s: a handful of retries, not a hot loop.
    assert retries <= 6 + outage_s, (retries, outage_s)


def test_f7e_two_relays_relay_each_row_once(
        pg: PostgresServer, table: str, own_redis: RedisServer, history: History,
        tmp_path: Path) -> None:
    relays = RelayProcesses(tmp_path, "f7e", own_redis.url)
    bus = EventBus(own_redis.client(), namespace="f7e")
    topics = ["ledger", "audit", "billing"]
    try:
        procs = [relays.start(pg.dsn, table, "--batch-size", "50", "--poll-interval", "0.2")
                 for _ in range(2)]
        wait_until(lambda: all(p.ready() for p in procs), 60, "two relays started")
        events = [Event(type=f"{topics[i % 3]}.posted", data={"n": i}) for i in range(1000)]
        assert produce(pg.dsn, table, history, events) == 1000
        wait_until(lambda: unpublished(pg.dsn, table) == 0, 120, "outbox drained")
        assert [p.terminate() for p in procs] == [0, 0], [p.output() for p in procs]
        counts = [p.published() for p in procs]
    finally:
        relays.stop()
    entries = stream_commits(bus.client, bus, topics)
    order = {e.id: i for i, e in enumerate(events)}
    inversions = {t: _inversions([order[f[b"id"].decode()] for _s, f in bus.client.xrange(
        bus.keys.stream(t))]) for t in topics}
    verdict = history.check()
    record("F7e-outbox-two-relays", **verdict.figures(), published_per_relay=counts,
           duplicate_stream_entries=sum(n - 1 for n in entries.values()),
           order_inversions_per_topic=inversions)
    verdict.assert_nothing_lost()
    # No row was claimed by both (SKIP LOCKED): the relays' counts add up exactly.
    assert sum(counts) == 1000, counts


def _inversions(seq: list[int]) -> int:
    """Adjacent pairs out of producer order (each relay keeps its batch in order; batches
    of two relays may interleave: docs/outbox.md)."""
    return sum(1 for a, b in itertools.pairwise(seq) if a > b)
