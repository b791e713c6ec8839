"""Outbox rows that cannot become an event (issue #12: "never loops on a poison message"),
on real PostgreSQL and Redis: each is marked failed once, logged once (never its payload),
counted, and claimed no more; the good rows around it are published once each, in order;
the operator lists, retries and deletes failed rows; ``init`` upgrades an older table."""

from __future__ import annotations

import logging
import subprocess
import sys

import msgspec
import psycopg
import pytest
import redis
from click.testing import CliRunner
from support import wait_until
from support.processes import ROOT, clean_env
from support.servers import redis_url

from chi_redis import Event, EventBus, outbox
from chi_redis.cli.main import cli
from chi_redis.outbox.failed import failed_rows, retry_failed
from chi_redis.outbox.relay import OutboxError, Relay
from chi_redis.outbox.schema import COLUMNS, encode_rows, insert_sql

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

SECRET = "SECRET-CARD-4111"  # in every poison payload: must reach no log and no error column
MAX_EVENT_BYTES = 4096
#: Each kind of poison row: the columns that spoil it, and a piece of its recorded reason.
POISON = {
    "topic": ({"topic": "Bad Topic"}, "invalid topic 'Bad Topic'"),
    "type": ({"type": "order placed!"}, "invalid type"),
    "too deep": ({"data": b"\x91" * 300 + b"\xc0"}, "data: payload nested too deeply"),
    "encoding": ({"enc": "zz"}, "data: unknown payload encoding"),
    "undecodable": ({"data": b"\xc1" + SECRET.encode()}, "data: MessagePack data is malformed"),
    "too large": ({"data": msgspec.msgpack.encode({"card": SECRET * 400})},
                  f"over the limit of {MAX_EVENT_BYTES} bytes"),
    "metadata": ({"metadata": "{not json"}, "metadata: JSON is malformed"),
}


def _row(event: Event, **spoiled: object) -> tuple[object, ...]:
    (row,) = encode_rows([event])
    values = {**dict(zip(COLUMNS, row, strict=True)), **spoiled}
    return tuple(values[c] for c in COLUMNS)


def _insert(dsn: str, table: str, rows: list[tuple[object, ...]]) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(insert_sql(table, "postgres"), rows)  # in seq order


def _good(n: int, start: int = 0) -> list[Event]:
    return [Event(type="order.placed", data={"n": i}) for i in range(start, start + n)]


def _stream_ids(client: redis.Redis, ns: str) -> list[str]:
    key = EventBus(client, namespace=ns).keys.stream("order")
    return [f[b"id"].decode() for _sid, f in client.xrange(key)]


def _errors(dsn: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return {r.id: r.error for r in failed_rows(conn, table)}


def test_each_kind_of_poison_row_is_isolated_once_and_the_good_rows_publish_once_in_order(
    pg_dsn: str, outbox_table: str, real_client: redis.Redis, ns: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = _good(len(POISON) + 1)
    bad = {kind: Event(type="order.placed", data={"kind": kind}) for kind in POISON}
    rows = [_row(good[0])]
    for (kind, (spoiled, _why)), g in zip(POISON.items(), good[1:], strict=True):
        rows += [_row(bad[kind], **spoiled), _row(g)]  # good rows before and after each
    _insert(pg_dsn, outbox_table, rows)
    bus = EventBus(real_client, namespace=ns, max_event_bytes=MAX_EVENT_BYTES)
    relay = Relay(pg_dsn, bus, table=outbox_table, batch_size=3)  # poison in most batches
    caplog.set_level(logging.ERROR, logger="chi_redis.outbox")
    try:
        assert relay.run(once=True) == len(good)
        assert relay.failed == len(POISON)
        assert _stream_ids(real_client, ns) == [e.id for e in good]  # once each, in order
        errors = _errors(pg_dsn, outbox_table)
        assert errors.keys() == {e.id for e in bad.values()}
        for kind, (_spoiled, why) in POISON.items():
            assert why in errors[bad[kind].id], (kind, errors[bad[kind].id])
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(logged) == len(POISON)  # one line per poison row, naming its id
        assert all(sum(repr(e.id) in m for m in logged) == 1 for e in bad.values()), logged
        assert SECRET not in "".join(logged) + "".join(errors.values())
        stats = relay.stats()
        assert (stats.backlog, stats.lag_s, stats.failed) == (0, 0.0, len(POISON))

        # Later passes skip the failed rows: nothing is logged or published again.
        caplog.clear()
        _insert(pg_dsn, outbox_table, [_row(e) for e in _good(2, start=100)])
        assert relay.run(once=True) == 2 and not caplog.records
        assert len(_stream_ids(real_client, ns)) == len(good) + 2

        # The operator fixes one row and retries it: published, after the others.
        fixed = bad["topic"].id
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(f"UPDATE {outbox_table} SET topic = 'order' WHERE id = %s", (fixed,))
            assert retry_failed(conn, outbox_table, [fixed]) == 1
        assert relay.run(once=True) == 1
        assert _stream_ids(real_client, ns)[-1] == fixed
        assert relay.stats().failed == len(POISON) - 1
    finally:
        relay.close()


#: The table as the version before failed rows made it.
OLD_DDL = """CREATE TABLE {t} (
    seq bigserial PRIMARY KEY, id text NOT NULL UNIQUE, topic text NOT NULL,
    type text NOT NULL, ts bigint NOT NULL, version text NOT NULL, metadata text NOT NULL,
    enc text NOT NULL, data bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz);
CREATE INDEX {t}_unpublished ON {t} (seq) WHERE published_at IS NULL;"""


def test_init_upgrades_a_table_of_the_previous_version_and_the_relay_says_so_before(
    pg_dsn: str, real_client: redis.Redis, ns: str,
) -> None:
    from support.postgres import drop_outbox, unique_table

    table = unique_table()
    waiting = _good(2)
    try:
        with psycopg.connect(pg_dsn) as conn:
            conn.execute(OLD_DDL.format(t=table))
            outbox.add_many(conn, waiting, table=table)  # the old table takes new rows
        relay = Relay(pg_dsn, EventBus(real_client, namespace=ns), table=table)
        with pytest.raises(OutboxError, match="run `chi-redis outbox init` to upgrade"):
            relay.run(once=True)
        for _ in range(2):  # idempotent
            r = CliRunner().invoke(cli, ["outbox", "init", "--table", table],
                                   env={"CHI_DATABASE_URL": pg_dsn})
            assert r.exit_code == 0, r.output
        _insert(pg_dsn, table, [_row(Event(type="order.placed"), topic="Bad Topic")])
        assert relay.run(once=True) == 2
        assert _stream_ids(real_client, ns) == [e.id for e in waiting]
        assert relay.stats().failed == 1
        relay.close()
    finally:
        drop_outbox(pg_dsn, table)


def test_cli_lists_retries_and_deletes_failed_rows(
    pg_dsn: str, outbox_table: str, real_client: redis.Redis, ns: str,
) -> None:
    spoiled = [Event(type="order.placed", data={"n": i}) for i in range(2)]
    _insert(pg_dsn, outbox_table, [_row(e, enc="zz") for e in spoiled])
    env = {"CHI_DATABASE_URL": pg_dsn, "CHI_NAMESPACE": ns}

    def chi(*args: str) -> str:
        r = CliRunner().invoke(cli, ["outbox", *args, "--table", outbox_table], env=env)
        assert r.exit_code == 0, r.output
        return r.output

    assert "published 0 events, marked 2 rows failed" in chi("relay", "--once")
    assert msgspec.json.decode(chi("status", "--json"))["failed"] == 2
    listed = [msgspec.json.decode(line) for line in chi("failed", "--json").splitlines()]
    assert [(r["id"], r["error"]) for r in listed] == [
        (e.id, "data: unknown payload encoding b'zz'") for e in spoiled]
    text = chi("failed")
    assert text.startswith("     SEQ  ID") and spoiled[1].id in text
    usage = CliRunner().invoke(cli, ["outbox", "retry", "--table", outbox_table], env=env)
    assert usage.exit_code == 2 and "--id ID" in usage.output

    with psycopg.connect(pg_dsn) as conn:
        conn.execute(f"UPDATE {outbox_table} SET enc = 'mp'")
    assert "1 failed rows back" in chi("retry", "--id", spoiled[0].id)
    assert "published 1 events" in chi("relay", "--once")
    assert _stream_ids(real_client, ns) == [spoiled[0].id]
    assert "deleted 1 failed rows" in chi("delete", "--all")
    assert "failed 0" in chi("status") and chi("failed") == ""


@pytest.mark.slow
def test_running_relay_process_isolates_a_poison_row_and_drains_later_ones(
    pg_dsn: str, outbox_table: str, real_client: redis.Redis, ns: str, relays,
) -> None:
    # A long poll interval: the inserts' and the retry's NOTIFYs are what wake the relay.
    relay = relays.start(pg_dsn, outbox_table, "--poll-interval", "60")
    wait_until(relay.ready, 60, "relay started")
    first, later = _good(3), _good(3, start=10)
    poison = Event(type="order.placed", data={"card": SECRET})
    _insert(pg_dsn, outbox_table, [_row(first[0]), _row(poison, type="Bad Type"),
                                   *[_row(e) for e in first[1:]]])
    wait_until(lambda: len(_stream_ids(real_client, ns)) == 3, 60, "the good rows relayed")
    _insert(pg_dsn, outbox_table, [_row(e) for e in later])
    wait_until(lambda: len(_stream_ids(real_client, ns)) == 6, 60, "later rows relayed")
    assert _stream_ids(real_client, ns) == [e.id for e in first + later]
    assert relay.alive()
    assert relay.output().count(f"id={poison.id!r} cannot be published") == 1
    assert SECRET not in relay.output()

    with psycopg.connect(pg_dsn) as conn:
        conn.execute(f"UPDATE {outbox_table} SET type = 'order.placed' WHERE id = %s",
                     (poison.id,))
    done = subprocess.run(  # the CLI once for real, as the operator runs it
        [sys.executable, "-m", "chi_redis.cli", "outbox", "retry", "--all", "--json",
         "--table", outbox_table], env=clean_env(CHI_DATABASE_URL=pg_dsn, CHI_REDIS_URL=
                                                 redis_url(), CHI_NAMESPACE=ns),
        cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert msgspec.json.decode(done.stdout)["retried"] == 1
    wait_until(lambda: len(_stream_ids(real_client, ns)) == 7, 60, "the retried row relayed")
    assert _stream_ids(real_client, ns)[-1] == poison.id
    assert relay.terminate() == 0, relay.output()
    assert relay.published() == 7
    assert relay.output().count("cannot be published") == 1
