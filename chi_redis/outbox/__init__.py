"""The transactional outbox: record events in the business transaction, publish after commit.

::

    with psycopg.connect(dsn) as conn:          # one transaction
        conn.execute("INSERT INTO orders ...")
        outbox.add(conn, Event(type="order.placed", data={...}))
    # committed: both rows, or (rolled back) neither; `chi-redis outbox relay` publishes it

:func:`add` / :func:`add_many` take a psycopg 3 connection or cursor, or a ``sqlite3``
connection or cursor (the embedded case); :func:`add_async` / :func:`add_many_async` take a
``psycopg.AsyncConnection`` or ``AsyncCursor``.  They only INSERT: the caller's transaction
decides (nothing is committed here; a connection in autocommit mode commits each insert by
itself).  The event is encoded with the project's codec, so the relay publishes exactly it,
with the event id as the outbox row id and its idempotency key.  :func:`init` creates the
table (``chi-redis outbox init``); :func:`init_sql` is its DDL, for migrations.  The relay is
:class:`chi_redis.outbox.relay.Relay`; docs/outbox.md has the guarantees.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import ValidationError
from ..events.codec import Encoding
from ..events.event import Event
from .schema import DEFAULT_TABLE, Dialect, encode_rows, init_sql, insert_sql

__all__ = [
    "DEFAULT_TABLE",
    "add",
    "add_async",
    "add_many",
    "add_many_async",
    "dialect_of",
    "init",
    "init_async",
    "init_sql",
]


def dialect_of(conn: Any) -> Dialect:
    """``"sqlite"`` for a sqlite3 connection/cursor, ``"postgres"`` for a psycopg one."""
    module = type(conn).__module__
    if module == "sqlite3":
        return "sqlite"
    if module.startswith("psycopg"):
        return "postgres"
    raise ValidationError(
        f"outbox needs a psycopg 3 or sqlite3 connection or cursor, got {type(conn).__name__}",
        field="conn")


def _is_async(conn: Any) -> bool:
    return type(conn).__name__.startswith("Async")


def _cursor(conn: Any) -> tuple[Any, bool]:
    """A cursor on ``conn`` (itself when it is one) and whether it was made here."""
    if hasattr(conn, "executemany"):
        return conn, False
    return conn.cursor(), True


def add(conn: Any, event: Event, *, table: str = DEFAULT_TABLE,
        encoding: Encoding = "msgpack") -> None:
    """Write ``event`` into the outbox ``table`` inside ``conn``'s open transaction."""
    add_many(conn, (event,), table=table, encoding=encoding)


def add_many(conn: Any, events: Iterable[Event], *, table: str = DEFAULT_TABLE,
             encoding: Encoding = "msgpack") -> None:
    """Write ``events`` into the outbox inside ``conn``'s open transaction (one statement
    batch; nothing is written when one event is invalid)."""
    if _is_async(conn):
        raise TypeError("an async psycopg connection or cursor: use add_async/add_many_async")
    sql = insert_sql(table, dialect_of(conn))
    rows = encode_rows(events, encoding)
    if not rows:
        return
    cur, own = _cursor(conn)
    try:
        cur.executemany(sql, rows)
    finally:
        if own:
            cur.close()


async def add_async(conn: Any, event: Event, *, table: str = DEFAULT_TABLE,
                    encoding: Encoding = "msgpack") -> None:
    """:func:`add` on a ``psycopg.AsyncConnection`` or ``AsyncCursor``."""
    await add_many_async(conn, (event,), table=table, encoding=encoding)


async def add_many_async(conn: Any, events: Iterable[Event], *, table: str = DEFAULT_TABLE,
                         encoding: Encoding = "msgpack") -> None:
    """:func:`add_many` on a ``psycopg.AsyncConnection`` or ``AsyncCursor``."""
    if not _is_async(conn):
        raise TypeError("not an async psycopg connection or cursor: use add/add_many")
    sql = insert_sql(table, dialect_of(conn))
    rows = encode_rows(events, encoding)
    if not rows:
        return
    cur, own = _cursor(conn)
    try:
        await cur.executemany(sql, rows)
    finally:
        if own:
            await cur.close()


def init(conn: Any, table: str = DEFAULT_TABLE) -> None:
    """Create the outbox ``table``, its indexes and (PostgreSQL) its notify trigger.

    Idempotent.  On PostgreSQL it runs in ``conn``'s transaction (commit it); on sqlite3
    ``executescript`` commits first, as it always does.
    """
    dialect = dialect_of(conn)
    if dialect == "sqlite":
        conn.executescript(init_sql(table, "sqlite"))
        return
    conn.execute(init_sql(table, "postgres"))


async def init_async(conn: Any, table: str = DEFAULT_TABLE) -> None:
    """:func:`init` on a ``psycopg.AsyncConnection``."""
    await conn.execute(init_sql(table, "postgres"))
