"""Relay processes on real PostgreSQL and Redis: a PostgreSQL restart under a running relay,
three relays sharing one table, SIGTERM.  (The relay killed between publish and mark is
F7c in tests/reliability/test_outbox_faults.py.)"""

from __future__ import annotations

import psycopg
import pytest
import redis
from support import wait_until
from support.postgres import postgres_server

from chi_redis import Event, EventBus, outbox

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def _add(dsn: str, table: str, n: int, start: int = 0, per_txn: int = 1000) -> list[str]:
    ids = []
    with psycopg.connect(dsn) as conn:
        for lo in range(start, start + n, per_txn):
            events = [Event(type="ledger.posted", data={"n": i})
                      for i in range(lo, min(lo + per_txn, start + n))]
            outbox.add_many(conn, events, table=table)
            conn.commit()
            ids += [e.id for e in events]
    return ids


def _stream_ids(client: redis.Redis, ns: str) -> list[str]:
    key = EventBus(client, namespace=ns).keys.stream("ledger")
    return [f[b"id"].decode() for _sid, f in client.xrange(key)]


def _unpublished(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE published_at IS NULL").fetchone()
    assert row is not None
    return int(row[0])


def test_postgres_restarted_under_a_running_relay(
    real_client: redis.Redis, ns: str, relays
) -> None:
    with postgres_server() as server:
        dsn = server.dsn
        with psycopg.connect(dsn) as conn:
            outbox.init(conn, "chi_outbox")
        relay = relays.start(dsn, "chi_outbox", "--poll-interval", "0.3")
        wait_until(relay.ready, 60, "relay started")
        ids = _add(dsn, "chi_outbox", 500)
        wait_until(lambda: len(_stream_ids(real_client, ns)) == 500, 60, "first 500 relayed")
        server.stop("fast")
        wait_until(lambda: "outbox database" in relay.output(), 60, "relay saw the outage")
        assert relay.alive()
        server.start()
        ids += _add(dsn, "chi_outbox", 700, start=500, per_txn=100)
        wait_until(lambda: len(_stream_ids(real_client, ns)) >= 1200, 90, "relayed after restart")
        assert _stream_ids(real_client, ns) == ids
        assert _unpublished(dsn, "chi_outbox") == 0
        assert relay.terminate() == 0, relay.output()
        assert relay.published() == 1200


def test_three_relays_publish_each_of_30000_events_exactly_once(
    pg_dsn: str, outbox_table: str, real_client: redis.Redis, ns: str, relays
) -> None:
    procs = [relays.start(pg_dsn, outbox_table, "--batch-size", "200", "--poll-interval", "0.5")
             for _ in range(3)]
    wait_until(lambda: all(p.ready() for p in procs), 60, "three relays started")
    ids = _add(pg_dsn, outbox_table, 30_000, per_txn=500)
    wait_until(lambda: real_client.xlen(EventBus(real_client, namespace=ns).keys.stream(
        "ledger")) >= 30_000 and _unpublished(pg_dsn, outbox_table) == 0, 240,
        "30000 events relayed", interval=0.5)
    seen = _stream_ids(real_client, ns)
    assert len(seen) == 30_000 and set(seen) == set(ids)
    assert [p.terminate() for p in procs] == [0, 0, 0], [p.output() for p in procs]
    counts = [p.published() for p in procs]
    assert sum(counts) == 30_000, counts
    assert sum(1 for c in counts if c > 0) >= 2, counts  # they really shared the table
