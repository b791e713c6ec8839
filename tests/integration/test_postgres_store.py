"""PostgresEventStore beyond the contract suite: table names, the SQL, batches, errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from support import free_port, wait_until
from support.postgres import require_postgres, unique_table

from chi_redis import Event, ValidationError
from chi_redis.store.postgres import DatabaseError, PostgresEventStore, create_table_sql

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg() -> Iterator[PostgresEventStore]:
    store = PostgresEventStore(require_postgres(), unique_table("pgstore"))
    store.init()
    store.init()  # idempotent
    try:
        yield store
    finally:
        store.drop()
        store.close()


def test_batches_store_each_event_once(pg: PostgresEventStore) -> None:
    t0 = datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    events = [Event(type="order.placed", data={"n": i}, timestamp=t0 + timedelta(microseconds=i))
              for i in range(50)]
    assert pg.store_many(events[:30]) == 30
    assert pg.store_many(events) == 20  # the first 30 are already there
    assert pg.store_many([]) == 0
    assert pg.count() == 50
    assert pg.load_by_topic("order", limit=100) == events
    assert pg.load(events[7].id).timestamp == t0 + timedelta(microseconds=7)  # type: ignore[union-attr]


def test_a_batch_holding_an_archived_id_stores_the_rest_once_in_order(
    pg: PostgresEventStore,
) -> None:
    """A batch over 32 rows is COPY-ed straight into the table; one that holds an id already
    stored (a redelivered batch) or the same id twice fails that COPY as a whole and goes
    the staging + ON CONFLICT way: every id once, the rest stored in batch order."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    events = [Event(type="order.placed", data={"n": i}, timestamp=t0 + timedelta(seconds=i))
              for i in range(200)]
    assert pg.store_many(events[:100]) == 100  # the direct COPY
    assert pg.store_many(events[90:]) == 100  # ids 90..99 archived already: the fallback
    assert pg.store_many(events[150:190]) == 0
    twice = [Event(type="order.placed", data={"n": i}) for i in range(40)]
    assert pg.store_many(twice + twice[:5]) == 40  # one id twice in the batch itself
    more = [Event(type="order.placed", data={"n": i}) for i in range(60)]
    assert pg.store_many(more) == 60  # the direct COPY again after fallbacks
    assert pg.count() == 300
    assert pg.load_by_topic("order", limit=400) == events + twice + more
    assert pg.load(events[95].id) == events[95]


def test_a_batch_the_database_refuses_writes_nothing_and_the_store_goes_on(
    pg: PostgresEventStore,
) -> None:
    events = [Event(type="order.placed", data={"n": i}) for i in range(40)]
    bad = [*events[:20], Event(type="order.placed", data={"s": "nul \x00 inside"}), *events[20:]]
    with pytest.raises(DatabaseError):
        pg.store_many(bad)  # JSONB refuses \u0000: the whole COPY is rolled back
    assert pg.count() == 0
    assert pg.store_many(events[:10]) == 10
    with pytest.raises(DatabaseError):
        pg.store_many(bad)  # the fallback (ids stored already) refuses it too
    assert pg.count() == 10
    assert pg.store_many(events) == 30
    assert pg.load_by_topic("order", limit=100) == events


def test_errors_say_whether_the_data_or_the_database_is_at_fault(
    pg: PostgresEventStore,
) -> None:
    poison = Event(type="order.placed", data={"s": "nul \x00 inside"})
    for batch in ([poison], [poison] * 40):  # INSERT from arrays, and COPY
        with pytest.raises(DatabaseError) as refused:
            pg.store_many(batch)
        assert refused.value.data_error
    with pytest.raises(DatabaseError) as refused:
        pg.store(poison)
    assert refused.value.data_error
    pg.drop()
    with pytest.raises(DatabaseError) as missing:
        pg.store_many([Event(type="order.placed", data={})])
    assert not missing.value.data_error  # no table: the database's fault, not the event's
    pg.init()


def test_a_connection_the_server_dropped_is_made_again(pg: PostgresEventStore) -> None:
    pg.store(Event(type="order.placed", data={"n": 0}))
    with psycopg.connect(require_postgres(), autocommit=True) as admin:
        pids = [r[0] for r in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND query LIKE %s", (f"%{pg.table_name}%",)).fetchall()]
        assert len(pids) == 1
        admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
        wait_until(lambda: not admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pids[0],)).fetchall(), timeout=30)
    events = [Event(type="order.placed", data={"n": i}) for i in range(1, 41)]
    with pytest.raises(DatabaseError) as dropped:
        pg.store_many(events)  # finds the connection gone
    assert not dropped.value.data_error
    assert pg.store_many(events) == 40  # connected again
    assert pg.count() == 41


def test_table_names_are_identifiers() -> None:
    for bad in ("events; drop table x", "1abc", "a-b", "", "a.b.c", 'x"y'):
        with pytest.raises(ValidationError):
            create_table_sql(bad)
    ddl = create_table_sql("public.my_events")
    assert 'CREATE TABLE IF NOT EXISTS "public"."my_events"' in ddl
    assert '"my_events_topic_seq" ON "public"."my_events" (topic, seq)' in ddl
    assert '"my_events_time" ON "public"."my_events" (timestamp, id)' in ddl


def test_schema_qualified_table(pg: PostgresEventStore) -> None:
    other = PostgresEventStore(require_postgres(), f"public.{unique_table('qualified')}")
    try:
        other.init()
        e = Event(type="user.created", data={"x": 1})
        other.store(e)
        assert other.load(e.id) == e
    finally:
        other.drop()
        other.close()


def test_an_unreachable_database_is_a_chi_error_without_the_password() -> None:
    dsn = f"postgresql://app:s3cret-pw@127.0.0.1:{free_port()}/test"
    with pytest.raises(DatabaseError) as info:
        PostgresEventStore(dsn, connect_timeout=2)
    assert "s3cret-pw" not in str(info.value)


def test_store_from_config_builds_each_store(tmp_path: object) -> None:
    import msgspec

    from chi_redis import ConfigError
    from chi_redis.config import ConfigFile, store_from_config
    from chi_redis.store.files import FileEventStore
    from chi_redis.store.postgres import redact_dsn

    url = require_postgres()
    table = unique_table("fromconfig")
    raw = {"events": {"store": {"type": "database", "database": {"table_name": table}}}}
    config = msgspec.convert(raw, ConfigFile).events
    with pytest.raises(ConfigError, match="CHI_DATABASE_URL"):
        store_from_config(config, env={})
    store = store_from_config(config, env={"CHI_DATABASE_URL": url})
    assert isinstance(store, PostgresEventStore) and store.table_name == table
    e = Event(type="user.created", data={"a": 1})
    store.store(e)
    assert store.load(e.id) == e
    store.drop()
    store.close()
    raw = {"events": {"store": {"type": "file", "file": {
        "directory": f"{tmp_path}/files", "max_file_size": "1MB", "max_files": 3}}}}
    files = store_from_config(msgspec.convert(raw, ConfigFile).events)
    assert isinstance(files, FileEventStore)
    assert (files.max_file_size, files.max_files) == (1 << 20, 3)
    files.close()
    off = msgspec.convert({"events": {"store": {"enabled": False}}}, ConfigFile).events
    with pytest.raises(ConfigError, match="enabled is false"):
        store_from_config(off)
    assert redact_dsn("host=h password='a b\\' c' user=u") == "host=h password=*** user=u"
