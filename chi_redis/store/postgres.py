"""An EventStore in a PostgreSQL table (psycopg 3, imported when a store is made).

The table has the seed's ``events`` shape — ``id, type, topic, data, metadata, timestamp,
version`` — plus ``seq``, a bigserial that orders a topic's events as they were stored (the
position id :meth:`PostgresEventStore.store` returns and the ``page_by_topic`` cursor).
``data`` and ``metadata`` are JSONB (msgspec JSON; payloads of registered ``@event_type``
classes decode back to them through the :class:`~chi_redis.events.codec.Codec`), ``timestamp``
is ``timestamptz``, which keeps the microseconds the project keeps.  ``id`` sorts bytewise
(``COLLATE "C"``) so time-range results come in the same (timestamp, id) order as every other
store.  JSONB cannot hold a ``\\u0000`` in a string: such payloads are refused by the server.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ChiError, ValidationError
from ..events.codec import Codec, us_to_datetime
from ..events.event import Event
from ..events.names import validate_name
from .query import check_page, check_range, type_matcher

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "DatabaseError", "PostgresEventStore", "create_table_sql", "redact_dsn", "validate_table_name",
]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")
_PAGE = 5000
_SMALL_BATCH = 32  # store_many: up to this many rows bound as arrays, more COPY-ed
_JSON = msgspec.json.Encoder()
_COLS = "id, type, topic, data, metadata, timestamp, version"

_DDL = """\
CREATE TABLE IF NOT EXISTS {table} (
    seq       bigserial   NOT NULL,
    id        text        COLLATE "C" PRIMARY KEY,
    type      text        NOT NULL,
    topic     text        NOT NULL,
    data      jsonb       NOT NULL,
    metadata  jsonb       NOT NULL DEFAULT '{{}}',
    timestamp timestamptz NOT NULL,
    version   text        NOT NULL DEFAULT '1.0'
);
CREATE INDEX IF NOT EXISTS {topic_index} ON {table} (topic, seq);
CREATE INDEX IF NOT EXISTS {time_index} ON {table} (timestamp, id);
"""


class DatabaseError(ChiError):
    """The database refused or could not run a store operation (the DSN is never shown).

    ``data_error``: the database refused the rows themselves (SQLSTATE class 22, a data
    exception such as a ``\\u0000`` in JSONB, or 23, an integrity constraint other than a
    duplicate id): the same rows fail again however often they are retried.  Every other
    error (connection lost, table missing, no privilege) is the database's and may pass.
    """

    def __init__(self, message: str, *, data_error: bool = False) -> None:
        super().__init__(message)
        self.data_error = data_error


def validate_table_name(table_name: str) -> list[str]:
    """Check a table name (``name`` or ``schema.name``); returns its parts."""
    if not isinstance(table_name, str) or not _IDENT.fullmatch(table_name):
        raise ValidationError(
            f"invalid table name {table_name!r}: letters, digits and '_', optionally"
            " schema.table", field="table_name")
    return table_name.split(".")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_table_sql(table_name: str = "events") -> str:
    """The ``CREATE TABLE``/``CREATE INDEX`` statements, for users' own migrations."""
    parts = validate_table_name(table_name)
    base = parts[-1]
    table = ".".join(_quote(p) for p in parts)
    return _DDL.format(table=table, topic_index=_quote(f"{base}_topic_seq"),
                       time_index=_quote(f"{base}_time"))


class PostgresEventStore:
    """EventStore over one PostgreSQL table; same contract as :class:`~chi_redis.store.EventStore`.

    ``dsn`` is a libpq connection string or URL (never printed).  One connection, in
    autocommit mode, shared under a lock: the store is thread-safe.  A connection the server
    dropped (a restart, ``pg_terminate_backend``) fails the call that finds it broken with a
    :class:`DatabaseError`; the next call connects again.  Call :meth:`init` once (or run
    :func:`create_table_sql` in a migration) before storing.
    """

    def __init__(self, dsn: str, table_name: str = "events", *, codec: Codec | None = None,
                 connect_timeout: float = 10.0) -> None:
        import psycopg
        from psycopg import sql

        self.table_name = table_name
        self._table = sql.Identifier(*validate_table_name(table_name))
        self._sql = sql
        self._codec = codec or Codec("json")
        self._lock = threading.Lock()
        self._connect_args = (dsn, max(1, int(connect_timeout)))
        self._psycopg = psycopg
        self._psycopg_error = psycopg.Error
        self._unique_violation = psycopg.errors.UniqueViolation
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        dsn, timeout = self._connect_args
        try:
            conn = self._psycopg.connect(dsn, autocommit=True, connect_timeout=timeout)
        except self._psycopg_error as exc:
            raise DatabaseError(f"cannot connect to the database: {type(exc).__name__}"
                                f" ({_first_line(exc)})") from None
        self._staging = False  # the store_many staging table exists on this connection
        self._copy_cursor: psycopg.Cursor[Any] | None = None
        self._closed = False
        return conn

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, connected again if the server dropped it (under the lock)."""
        if self._conn.broken and not self._closed:
            self._conn.close()
            self._conn = self._connect()
        return self._conn

    def __repr__(self) -> str:
        return f"PostgresEventStore(table_name={self.table_name!r})"

    def close(self) -> None:
        """Close the connection."""
        self._closed = True
        self._conn.close()

    def __enter__(self) -> PostgresEventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # plumbing -------------------------------------------------------------------------
    def _q(self, text: str) -> Any:
        return self._sql.SQL(text).format(t=self._table)

    def _run(self, query: Any, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                cur = self._live().execute(query, params)
                return cur.fetchall() if cur.description else []
            except self._psycopg_error as exc:
                raise _database_error(exc) from None

    def _select(self, where: str, params: Sequence[Any], tail: str) -> list[Event]:
        query = self._q(
            # {t}: a sql.Identifier; where and tail: fixed SQL with %s parameters
            "SELECT id, type, topic, data::text, metadata::text,"  # fixed SQL  # nosec B608
            " (extract(epoch FROM timestamp) * 1000000)::bigint, version, seq"
            f" FROM {{t}} WHERE {where} {tail}")
        return [self._event(r) for r in self._run(query, params)]

    def _event(self, row: tuple[Any, ...]) -> Event:
        id_, type_, topic, data, meta, ts, ver, _ = row
        fields = {b"id": id_.encode(), b"type": type_.encode(), b"ts": str(ts).encode(),
                  b"ver": ver.encode(), b"meta": meta.encode(), b"enc": b"js",
                  b"data": data.encode()}
        return self._codec.decode(fields, topic=topic, stream=self.table_name, entry_id=id_)

    def _row(self, event: Event) -> tuple[Any, ...]:
        _, _, _, _, meta, data = self._codec.encode_parts(event)
        return (event.id, event.type, event.topic, data.decode(), meta.decode(),
                event.timestamp, event.version)

    def _copy_row(self, event: Event) -> tuple[Any, ...]:
        """A row for the binary ``COPY``: the JSON columns as encoded bytes."""
        _, _, _, _, meta, data = self._codec.encode_parts(event)
        return (event.id, event.type, event.topic, data, meta, event.timestamp, event.version)

    # set-up ---------------------------------------------------------------------------
    def init(self) -> None:
        """Create the table and its indexes when missing (idempotent)."""
        ddl: Any = create_table_sql(self.table_name)
        self._run(ddl)

    create_table = init

    def drop(self) -> None:
        """Drop the table (tests, tools)."""
        self._run(self._q("DROP TABLE IF EXISTS {t}"))

    # EventStore -----------------------------------------------------------------------
    def store(self, event: Event) -> str:
        """Store ``event`` (an id already stored writes nothing); returns its position id."""
        row = self._row(event)
        got = self._run(self._q(
            "INSERT INTO {t} (id, type, topic, data, metadata, timestamp, version)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING seq"),
            row)
        if not got:
            got = self._run(self._q("SELECT seq FROM {t} WHERE id = %s"), (event.id,))
        return str(got[0][0]) if got else ""

    def store_many(self, events: Iterable[Event]) -> int:
        """Store a batch in one transaction (ids already stored are skipped); returns how
        many were new.  The archiver's write path.

        The rows are ``COPY``-ed straight into the table, one statement and one implicit
        transaction.  ``COPY`` cannot skip duplicates: when an id of the batch is already
        stored (a redelivered batch, after a crash) it fails as a whole with a unique
        violation, and the batch goes the duplicate-safe way instead — ``COPY`` into a
        temporary staging table, then one ``INSERT … SELECT … ON CONFLICT (id) DO NOTHING``
        in staging order (docs/benchmarks.md).  Batches of up to 32 rows (the archiver
        subscription's, bounded by its worker threads) go in one ``INSERT … SELECT FROM
        unnest(…) ON CONFLICT DO NOTHING``: one round trip, no failure to retry.
        """
        batch = list(events)
        if not batch:
            return 0
        if len(batch) <= _SMALL_BATCH:  # one round trip beats four for a handful of rows
            cols_ = list(zip(*[self._row(e) for e in batch], strict=True))
            return len(self._run(self._q(
                "INSERT INTO {t} (id, type, topic, data, metadata, timestamp, version)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::jsonb[],"
                " %s::jsonb[], %s::timestamptz[], %s::text[])"
                " ON CONFLICT (id) DO NOTHING RETURNING seq"), [list(c) for c in cols_]))
        rows = [self._copy_row(e) for e in batch]
        with self._lock:
            try:
                self._live()
                try:
                    return self._copy(self._table, rows)
                except self._unique_violation:
                    pass  # an id of the batch is stored already: nothing of it was written
                return self._copy_staged(rows)
            except self._psycopg_error as exc:
                raise _database_error(exc) from None

    def _copy(self, table: Any, rows: list[tuple[Any, ...]]) -> int:
        """``COPY`` ``rows`` into ``table`` in binary format (under the lock); returns the
        row count.  Binary: the timestamps and strings go as they are, without the text
        format's escaping and ``datetime`` formatting (a third of the client's time)."""
        copy_sql = self._sql.SQL(
            f"COPY {{t}} ({_COLS}) FROM STDIN (FORMAT BINARY)").format(t=table)
        cur = self._copy_cursor
        if cur is None:
            cur = self._copy_cursor = self._conn.cursor()
            cur.adapters.register_dumper(None, _jsonb_bytes_dumper())
        with cur.copy(copy_sql) as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        return max(cur.rowcount, 0)

    def _copy_staged(self, rows: list[tuple[Any, ...]]) -> int:
        """The duplicate-safe batch write: staging table, then ``ON CONFLICT DO NOTHING``."""
        sql = self._sql
        stage = sql.Identifier(f"chi_stage_{self.table_name.replace('.', '_')}")
        try:
            with self._conn.transaction():
                if not self._staging:
                    self._conn.execute(sql.SQL(
                        "CREATE TEMP TABLE IF NOT EXISTS {s} (ord bigserial, id text,"
                        " type text, topic text, data jsonb, metadata jsonb,"
                        " timestamp timestamptz, version text) ON COMMIT DELETE ROWS"
                    ).format(s=stage))
                    self._staging = True
                self._copy(stage, rows)
                cur = self._conn.execute(sql.SQL(
                    f"INSERT INTO {{t}} ({_COLS}) SELECT {_COLS} FROM {{s}} ORDER BY ord"  # idents  # nosec B608
                    " ON CONFLICT (id) DO NOTHING").format(t=self._table, s=stage))
                return max(cur.rowcount, 0)
        except self._psycopg_error:
            self._staging = False  # a failed transaction may have taken the table with it
            raise

    def load(self, event_id: str) -> Event | None:
        found = self._select("id = %s", (event_id,), "")
        return found[0] if found else None

    def load_by_topic(self, topic: str, offset: int = 0, limit: int = 100) -> list[Event]:
        check_page(topic, offset, limit)
        if limit == 0:
            return []
        return self._select("topic = %s", (topic, offset, limit),
                            "ORDER BY seq OFFSET %s LIMIT %s")

    def page_by_topic(
        self, topic: str, after: str | None = None, limit: int = 100
    ) -> tuple[list[Event], str | None]:
        check_page(topic, 0, limit)
        if limit == 0:
            return [], after
        start = _cursor(after)
        rows = self._run(self._q(
            "SELECT id, type, topic, data::text, metadata::text,"
            " (extract(epoch FROM timestamp) * 1000000)::bigint, version, seq"
            " FROM {t} WHERE topic = %s AND seq > %s ORDER BY seq LIMIT %s"),
            (topic, start, limit))
        if not rows:
            return [], after
        return [self._event(r) for r in rows], str(rows[-1][-1])

    def load_by_time_range(
        self,
        start: datetime,
        end: datetime,
        *,
        topic: str | None = None,
        types: list[str] | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        lo, hi = check_range(start, end, limit)
        if topic is not None:
            validate_name(topic, "topic")
        match = type_matcher(types)
        out: list[Event] = []
        if limit == 0 or lo > hi:
            return out
        for page in self.time_pages(lo, hi, topic=topic):
            out.extend(e for e in page if match is None or match(e.type))
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out

    def time_pages(self, lo_us: int, hi_us: int, *, topic: str | None = None,
                   page: int = _PAGE) -> Iterator[list[Event]]:
        """Events with event time in ``[lo_us, hi_us]`` (µs), by (timestamp, id), in pages
        (keyset paging: each page is one index range scan)."""
        lo, hi = us_to_datetime(lo_us), us_to_datetime(hi_us)
        where = "timestamp <= %s" + (" AND topic = %s" if topic is not None else "")
        extra: tuple[Any, ...] = (topic,) if topic is not None else ()
        first = self._select(f"timestamp >= %s AND {where}", (lo, hi, *extra, page),
                             "ORDER BY timestamp, id LIMIT %s")
        batch = first
        while batch:
            yield batch
            if len(batch) < page:
                return
            last = batch[-1]
            batch = self._select(f"(timestamp, id) > (%s, %s) AND {where}",
                                 (last.timestamp, last.id, hi, *extra, page),
                                 "ORDER BY timestamp, id LIMIT %s")

    def count_time_range(self, lo_us: int, hi_us: int, *, topic: str | None = None) -> int:
        """How many events have event time in ``[lo_us, hi_us]`` (µs)."""
        where = "timestamp >= %s AND timestamp <= %s" + (" AND topic = %s" if topic else "")
        params = (us_to_datetime(lo_us), us_to_datetime(hi_us), *([topic] if topic else []))
        query = self._q(f"SELECT count(*) FROM {{t}} WHERE {where}")  # fixed SQL  # nosec B608
        return int(self._run(query, params)[0][0])

    def delete(self, event_id: str) -> bool:
        return bool(self._run(self._q("DELETE FROM {t} WHERE id = %s RETURNING seq"),
                              (event_id,)))

    def count(self) -> int:
        """How many events the table holds."""
        return int(self._run(self._q("SELECT count(*) FROM {t}"))[0][0])


_COPY_TYPES = ["text", "text", "text", "jsonb", "jsonb", "timestamptz", "text"]


def _jsonb_bytes_dumper() -> type[Any]:
    """A binary ``jsonb`` dumper of JSON that is encoded already (bytes): version 1 + text."""
    from psycopg.adapt import Dumper
    from psycopg.pq import Format

    class JsonbBytesDumper(Dumper):
        format = Format.BINARY
        oid = 3802  # jsonb (a built-in type: the same oid on every server)

        def dump(self, obj: Any) -> bytes:
            return b"\x01" + bytes(obj)

    return JsonbBytesDumper


def _cursor(after: str | None) -> int:
    if after is None:
        return 0
    try:
        return int(after)
    except (TypeError, ValueError):
        raise ValidationError(f"invalid cursor {after!r}", field="after") from None


_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)[^@]*@", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***`` (URL or ``key=value`` form)."""
    return _URL_PASSWORD.sub(r"\1***@", _KV_PASSWORD.sub(r"\1***", dsn))


def _database_error(exc: BaseException) -> DatabaseError:
    state = str(getattr(exc, "sqlstate", "") or "")
    return DatabaseError(f"{type(exc).__name__}: {_first_line(exc)}",
                         data_error=state[:2] in ("22", "23") and state != "23505")


def _first_line(exc: BaseException) -> str:
    # psycopg messages can quote the connection string's host but never its password;
    # keep only the first line (the server's hints repeat the statement).
    return (str(exc).strip().splitlines() or [""])[0][:200]
