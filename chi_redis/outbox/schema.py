"""The outbox table: its SQL (PostgreSQL and sqlite) and the row an event becomes.

A row keeps the event exactly as the publish script writes it (the fields of
:meth:`chi_redis.events.codec.Codec.encode_parts` plus the encoding tag), so the relay
publishes the very bytes the caller's transaction recorded:

================  =================================================================
column            value
================  =================================================================
``seq``           claim order (bigserial / sqlite rowid)
``id``            the event id: the outbox row id and the idempotency key (unique)
``topic``         the event's topic
``type``          the event type
``ts``            event time, integer microseconds since the Unix epoch
``version``       schema version
``metadata``      metadata as JSON text
``enc``           payload encoding tag (``mp`` or ``js``)
``data``          the encoded payload
``created_at``    when the row was written (the lag is the oldest unpublished one's age)
``published_at``  NULL until the relay published the event
``failed_at``     NULL unless the row cannot become a valid event: then the relay marks
                  it failed and claims it no more (docs/outbox.md, "Rows that cannot be
                  published")
``error``         why it failed (one line, never the payload)
================  =================================================================

:func:`init_sql` also upgrades a table made by a version without ``failed_at`` / ``error``
(PostgreSQL: ``ALTER TABLE … ADD COLUMN IF NOT EXISTS``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from ..errors import ValidationError
from ..events.codec import Codec, Encoding
from ..events.event import Event

__all__ = [
    "COLUMNS",
    "DEFAULT_TABLE",
    "Dialect",
    "channel",
    "check_table",
    "encode_rows",
    "init_sql",
    "insert_sql",
]

DEFAULT_TABLE = "chi_outbox"
Dialect = Literal["postgres", "sqlite"]
#: The columns ``add`` writes, in the order of :func:`encode_rows`' tuples.
COLUMNS = ("id", "topic", "type", "ts", "version", "metadata", "enc", "data")
Row = tuple[str, str, str, int, str, str, str, bytes]

# The name goes into SQL text (DDL and LISTEN take no parameters): a plain identifier only,
# short enough that the index, function and trigger names built from it stay under 63 bytes.
_TABLE = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_CODECS: dict[str, Codec] = {}


def check_table(table: str) -> str:
    """``table`` if it is a valid outbox table name (lower-case identifier, ≤ 48 chars)."""
    if not isinstance(table, str) or not _TABLE.fullmatch(table):
        raise ValidationError(
            f"invalid outbox table name {table!r}: lower-case letters, digits and _ "
            "(at most 48, not starting with a digit)", field="table")
    return table


def channel(table: str) -> str:
    """The LISTEN/NOTIFY channel an insert into ``table`` notifies (the table's name)."""
    return check_table(table)


def _codec(encoding: Encoding) -> Codec:
    codec = _CODECS.get(encoding)
    if codec is None:
        codec = _CODECS[encoding] = Codec(encoding)
    return codec


def encode_rows(events: Iterable[Event], encoding: Encoding = "msgpack") -> list[Row]:
    """The outbox rows of ``events`` (validated and encoded with the project's codec).

    Raises :class:`~chi_redis.ValidationError` (or ``PayloadTooLargeError``) before
    anything is written, like a publish would.
    """
    codec = _codec(encoding)
    tag = codec.enc_tag.decode()
    rows: list[Row] = []
    for i, event in enumerate(events):
        if not isinstance(event, Event):
            raise ValidationError(
                f"expected an Event, got {type(event).__name__}", field=f"events[{i}]")
        id_, type_, ts, version, meta, data = codec.encode_parts(event)
        rows.append((id_, event.topic, type_, ts, version, meta.decode(), tag, data))
    return rows


def insert_sql(table: str, dialect: Dialect) -> str:
    """The parametrised INSERT of one row (``%s`` for psycopg, ``?`` for sqlite3)."""
    mark = "%s" if dialect == "postgres" else "?"
    cols = ", ".join(COLUMNS)
    return (f"INSERT INTO {check_table(table)} ({cols}) "  # checked name  # nosec B608
            f"VALUES ({', '.join([mark] * len(COLUMNS))})")


def init_sql(table: str = DEFAULT_TABLE, dialect: Dialect = "postgres") -> str:
    """The DDL of the outbox ``table``: table, indexes and (PostgreSQL) the notify trigger.

    Idempotent (``IF NOT EXISTS`` / ``OR REPLACE``): running it again changes nothing, and
    on PostgreSQL it adds the ``failed_at`` / ``error`` columns to an older table (sqlite:
    new tables only; the relay, their only reader, needs PostgreSQL).
    The partial index on ``seq`` serves the relay's claim of unpublished rows in order;
    the one on ``published_at`` serves the cleanup of old published rows.
    """
    t = check_table(table)
    if dialect == "sqlite":
        return f"""CREATE TABLE IF NOT EXISTS {t} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    type TEXT NOT NULL,
    ts INTEGER NOT NULL,
    version TEXT NOT NULL,
    metadata TEXT NOT NULL,
    enc TEXT NOT NULL,
    data BLOB NOT NULL,
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
    published_at REAL,
    failed_at REAL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS {t}_unpublished ON {t} (seq) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS {t}_published ON {t} (published_at)
    WHERE published_at IS NOT NULL;
"""
    if dialect != "postgres":
        raise ValidationError(f"unknown SQL dialect {dialect!r}", field="dialect")
    return f"""CREATE TABLE IF NOT EXISTS {t} (
    seq bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    topic text NOT NULL,
    type text NOT NULL,
    ts bigint NOT NULL,
    version text NOT NULL,
    metadata text NOT NULL,
    enc text NOT NULL,
    data bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    failed_at timestamptz,
    error text
);
-- Upgrades a table made before rows could be marked failed (a no-op once they exist).
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS failed_at timestamptz,
    ADD COLUMN IF NOT EXISTS error text;
CREATE INDEX IF NOT EXISTS {t}_unpublished ON {t} (seq) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS {t}_published ON {t} (published_at)
    WHERE published_at IS NOT NULL;
-- Wakes the relays (LISTEN {t}) once per inserting statement, delivered at commit.
CREATE OR REPLACE FUNCTION {t}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{t}', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS {t}_notify ON {t};
CREATE TRIGGER {t}_notify AFTER INSERT ON {t}
    FOR EACH STATEMENT EXECUTE FUNCTION {t}_notify();
"""
