"""The outbox's add (psycopg sync/async, sqlite3) and the relay in-process, on real
PostgreSQL and Redis: committed → published exactly as recorded; rolled back → nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import msgspec
import psycopg
import pytest
import redis
from click.testing import CliRunner
from support import free_port

from chi_redis import Event, EventBus, ValidationError, event_type, outbox
from chi_redis.cli.main import cli
from chi_redis.outbox.relay import OutboxError, Relay

pg = [pytest.mark.postgres, pytest.mark.redis]


@event_type("shipment.sent")
class ShipmentSent(msgspec.Struct):
    order_id: str
    amount: float


def _business(conn: psycopg.Connection, table: str) -> None:
    conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, amount float8)")


def _stream_ids(bus: EventBus, topic: str) -> list[str]:
    entries = bus.client.xrange(bus.keys.stream(topic))
    return [fields[b"id"].decode() for _sid, fields in entries]


@pytest.mark.parametrize("_m", [pytest.param(0, marks=pg)])
def test_committed_business_row_and_event_are_both_visible_and_published(
    _m: int, pg_dsn: str, outbox_table: str, real_client: redis.Redis, ns: str
) -> None:
    biz = outbox_table + "_orders"
    event = Event.of(ShipmentSent(order_id="o1", amount=12.5), metadata={"tenant": "acme"},
                     timestamp=datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
    with psycopg.connect(pg_dsn) as conn:
        _business(conn, biz)
        conn.commit()
        conn.execute(f"INSERT INTO {biz} VALUES ('o1', 12.5)")
        outbox.add(conn, event, table=outbox_table)
    try:
        with psycopg.connect(pg_dsn) as conn:
            assert conn.execute(f"SELECT count(*) FROM {biz}").fetchone() == (1,)
            assert conn.execute(f"SELECT id FROM {outbox_table}").fetchall() == [(event.id,)]
        bus = EventBus(real_client, namespace=ns)
        relay = Relay(pg_dsn, bus, table=outbox_table)
        assert relay.stats().backlog == 1
        assert relay.run(once=True) == 1
        assert bus.store.load(event.id) == event  # exactly the event: data, meta, time, id
        assert _stream_ids(bus, "shipment") == [event.id]
        assert relay.stats().backlog == 0
        relay.close()
    finally:
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(f"DROP TABLE {biz}")


@pytest.mark.parametrize("_m", [pytest.param(0, marks=pg)])
def test_rolled_back_transaction_leaves_neither_row_nor_event(
    _m: int, pg_dsn: str, outbox_table: str, real_client: redis.Redis, ns: str
) -> None:
    biz = outbox_table + "_orders"
    with psycopg.connect(pg_dsn) as conn:
        _business(conn, biz)
        conn.commit()
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute(f"INSERT INTO {biz} VALUES ('o1', 1)")
            with conn.cursor() as cur:  # a cursor works as well as the connection
                outbox.add(cur, Event(type="order.placed", data={"n": 1}), table=outbox_table)
            raise RuntimeError("business rule failed")
        assert conn.execute(f"SELECT count(*) FROM {biz}").fetchone() == (0,)
        assert conn.execute(f"SELECT count(*) FROM {outbox_table}").fetchone() == (0,)
        conn.execute(f"DROP TABLE {biz}")
        conn.commit()
    bus = EventBus(real_client, namespace=ns)
    relay = Relay(pg_dsn, bus, table=outbox_table)
    assert relay.run(once=True) == 0
    assert _stream_ids(bus, "order") == []
    relay.close()


@pytest.mark.parametrize("_m", [pytest.param(0, marks=pg)])
def test_republishing_claimed_rows_writes_nothing_twice(
    _m: int, pg_dsn: str, outbox_table: str, real_client: redis.Redis, ns: str
) -> None:
    """A batch published but never marked (what a crash leaves) is published again by the
    next relay: the idempotency keys / event ids make that write nothing."""
    events = [Event(type="order.placed", data={"n": i}) for i in range(1200)]
    with psycopg.connect(pg_dsn) as conn:
        outbox.add_many(conn, events, table=outbox_table)
    bus = EventBus(real_client, namespace=ns)
    relay = Relay(pg_dsn, bus, table=outbox_table, batch_size=250)
    assert relay.run(once=True) == 1200
    first = real_client.xrange(bus.keys.stream("order"))
    with psycopg.connect(pg_dsn) as conn:  # as if never marked
        conn.execute(f"UPDATE {outbox_table} SET published_at = NULL")
    assert relay.run(once=True) == 1200
    assert real_client.xrange(bus.keys.stream("order")) == first
    assert _stream_ids(bus, "order") == [e.id for e in events]  # one relay: in order
    relay.close()


@pytest.mark.parametrize("_m", [pytest.param(0, marks=pg)])
def test_delete_published_and_cleanup_of_old_published_rows(
    _m: int, pg_dsn: str, outbox_table: str, real_client: redis.Redis, ns: str
) -> None:
    bus = EventBus(real_client, namespace=ns)
    with psycopg.connect(pg_dsn) as conn:
        outbox.add_many(conn, [Event(type="a.b", data=i) for i in range(10)], table=outbox_table)
    marking = Relay(pg_dsn, bus, table=outbox_table, keep_s=3600)
    assert marking.run(once=True) == 10
    count = f"SELECT count(*) FROM {outbox_table}"
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(count).fetchone() == (10,)  # marked, kept for keep_s
        conn.execute(f"UPDATE {outbox_table} SET published_at = now() - interval '2 hours'"
                     f" WHERE seq IN (SELECT seq FROM {outbox_table} ORDER BY seq LIMIT 4)")
    assert marking.cleanup() == 4
    deleting = Relay(pg_dsn, bus, table=outbox_table, delete_published=True)
    with psycopg.connect(pg_dsn) as conn:
        outbox.add_many(conn, [Event(type="a.b", data=i) for i in range(5)], table=outbox_table)
    assert deleting.run(once=True) == 5
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(count).fetchone() == (6,)  # the 6 marked ones; the 5 deleted
    assert real_client.xlen(bus.keys.stream("a")) == 15
    marking.close()
    deleting.close()


@pytest.mark.parametrize("_m", [pytest.param(0, marks=pg)])
def test_stats_report_backlog_and_the_oldest_rows_age(
    _m: int, pg_dsn: str, outbox_table: str, real_client: redis.Redis, ns: str
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        outbox.add_many(conn, [Event(type="a.b", data=i) for i in range(3)], table=outbox_table)
        conn.execute(f"UPDATE {outbox_table} SET created_at = now() - interval '90 seconds'"
                     f" WHERE seq = (SELECT min(seq) FROM {outbox_table})")
    relay = Relay(pg_dsn, EventBus(real_client, namespace=ns), table=outbox_table)
    stats = relay.stats()
    assert stats.backlog == 3
    assert 89 <= stats.lag_s < 300
    relay.run(once=True)
    assert relay.stats().as_dict() == {"backlog": 0, "lag_s": 0.0, "published": 3,
                                       "failed": 0}
    relay.close()


@pytest.mark.parametrize("_m", [pytest.param(0, marks=pg)])
def test_async_psycopg_add(
    _m: int, pg_dsn: str, outbox_table: str, real_client: redis.Redis, ns: str
) -> None:
    events = [Event(type="order.placed", data={"n": i}) for i in range(3)]

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            await outbox.add_async(conn, events[0], table=outbox_table)
            async with conn.cursor() as cur:
                await outbox.add_many_async(cur, events[1:], table=outbox_table)
            with pytest.raises(TypeError, match="add_async"):
                outbox.add(conn, events[0], table=outbox_table)
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            await outbox.add_async(conn, Event(type="order.placed"), table=outbox_table)
            await conn.rollback()

    asyncio.run(write())
    bus = EventBus(real_client, namespace=ns)
    relay = Relay(pg_dsn, bus, table=outbox_table)
    assert relay.run(once=True) == 3
    assert [bus.store.load(e.id) for e in events] == events
    relay.close()


def test_sqlite_add_commits_and_rolls_back_with_the_transaction() -> None:
    conn = sqlite3.connect(":memory:")
    outbox.init(conn)
    outbox.init(conn)  # idempotent
    conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
    event = Event.of(ShipmentSent(order_id="o1", amount=3.0))
    with conn:  # one transaction: committed
        conn.execute("INSERT INTO orders VALUES ('o1')")
        outbox.add(conn, event)
    with pytest.raises(RuntimeError), conn:  # rolled back
        conn.execute("INSERT INTO orders VALUES ('o2')")
        outbox.add_many(conn.cursor(), [Event(type="order.placed", data={})])
        raise RuntimeError("no")
    assert conn.execute("SELECT id FROM orders").fetchall() == [("o1",)]
    rows = conn.execute("SELECT id, topic, type, enc, data, published_at, created_at"
                        " FROM chi_outbox").fetchall()
    assert len(rows) == 1
    id_, topic, type_, enc, data, published_at, created_at = rows[0]
    assert (id_, topic, type_, enc, published_at) == (event.id, "shipment", "shipment.sent",
                                                      "mp", None)
    assert msgspec.msgpack.decode(data, type=ShipmentSent) == event.data
    assert abs(created_at - datetime.now(UTC).timestamp()) < 600


def test_add_refuses_invalid_events_and_connections_before_writing() -> None:
    conn = sqlite3.connect(":memory:")
    outbox.init(conn)
    with pytest.raises(ValidationError):
        outbox.add_many(conn, [Event(type="a.b"), "not an event"])  # type: ignore[list-item]
    assert conn.execute("SELECT count(*) FROM chi_outbox").fetchone() == (0,)
    with pytest.raises(ValidationError, match="psycopg 3 or sqlite3"):
        outbox.add(object(), Event(type="a.b"))
    with pytest.raises(ValidationError, match="table"):
        outbox.add(conn, Event(type="a.b"), table="x; DROP TABLE y")


def test_init_print_sql_needs_no_database() -> None:
    result = CliRunner().invoke(cli, ["outbox", "init", "--print-sql", "--table", "my_outbox"])
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE IF NOT EXISTS my_outbox" in result.output
    assert "WHERE published_at IS NULL" in result.output
    assert "pg_notify('my_outbox'" in result.output
    lite = CliRunner().invoke(cli, ["outbox", "init", "--print-sql", "--dialect", "sqlite"])
    conn = sqlite3.connect(":memory:")
    conn.executescript(lite.output)  # the printed DDL is what init runs
    assert conn.execute("SELECT count(*) FROM chi_outbox").fetchone() == (0,)


def test_the_dsn_password_never_appears_in_errors() -> None:
    dsn = f"postgresql://app:s3cr3t-pw@127.0.0.1:{free_port()}/nowhere"
    for args in (["outbox", "status", "--dsn", dsn], ["outbox", "relay", "--once", "--dsn", dsn],
                 ["outbox", "init", "--dsn", dsn]):
        result = CliRunner().invoke(cli, args, env={"CHI_REDIS_URL": "redis://127.0.0.1:1/0"})
        assert result.exit_code == 1, (args, result.output)
        assert "s3cr3t" not in result.output and "outbox database" in result.output
    with pytest.raises(OutboxError) as err:
        Relay(dsn.replace("postgresql", "postgres"), EventBus.from_url("redis://127.0.0.1:1/0"))\
            .stats()
    assert "s3cr3t" not in str(err.value)
    missing = CliRunner().invoke(cli, ["outbox", "status"], env={"CHI_DATABASE_URL": ""})
    assert missing.exit_code == 1 and "CHI_DATABASE_URL" in missing.output


@pytest.mark.parametrize("_m", [pytest.param(0, marks=pg)])
def test_cli_init_relay_once_and_status(
    _m: int, pg_dsn: str, real_client: redis.Redis, ns: str
) -> None:
    from support.postgres import drop_outbox, unique_table

    table = unique_table()
    env = {"CHI_DATABASE_URL": pg_dsn, "CHI_NAMESPACE": ns}
    try:
        for _ in range(2):  # idempotent
            r = CliRunner().invoke(cli, ["outbox", "init", "--table", table], env=env)
            assert r.exit_code == 0, r.output
        with psycopg.connect(pg_dsn) as conn:
            outbox.add_many(conn, [Event(type="a.b", data=i) for i in range(7)], table=table)
        status = CliRunner().invoke(cli, ["outbox", "status", "--table", table, "--json"],
                                    env=env)
        assert status.exit_code == 0, status.output
        assert msgspec.json.decode(status.output)["backlog"] == 7
        run = CliRunner().invoke(cli, ["outbox", "relay", "--once", "--table", table], env=env)
        assert run.exit_code == 0, run.output
        assert "published 7 events" in run.output
        assert real_client.xlen(EventBus(real_client, namespace=ns).keys.stream("a")) == 7
    finally:
        drop_outbox(pg_dsn, table)
