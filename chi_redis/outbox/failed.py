"""Outbox rows the relay marked failed: list them, retry them, delete them.

A row that cannot become a valid event (docs/outbox.md, "Rows that cannot be published")
is marked ``failed_at`` / ``error`` by the relay and claimed no more.  These functions run
in ``conn``'s transaction (a psycopg 3 connection: commit it); ``chi-redis outbox failed |
retry | delete`` calls them.  ``ids`` selects rows by event id (the ``id`` column); None
means every failed row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .schema import channel, check_table

if TYPE_CHECKING:
    import psycopg

__all__ = ["FailedRow", "delete_failed", "failed_rows", "retry_failed"]

# Failed rows are never published (the relay marks only unpublished ones), so this filter
# is served by the partial index on unpublished rows.
_FAILED = "published_at IS NULL AND failed_at IS NOT NULL"


@dataclass(frozen=True)
class FailedRow:
    """One failed outbox row, without its payload."""

    seq: int
    id: str
    topic: str
    type: str
    failed_at: datetime
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failed_at": self.failed_at.isoformat()}


def _where(ids: Sequence[str] | None) -> tuple[str, tuple[Any, ...]]:
    if ids is None:
        return _FAILED, ()
    return f"{_FAILED} AND id = ANY(%s)", (list(ids),)


def failed_rows(conn: psycopg.Connection[Any], table: str, limit: int = 100) -> list[FailedRow]:
    """Up to ``limit`` failed rows of ``table``, oldest (lowest ``seq``) first."""
    t = check_table(table)
    rows = conn.execute(
        f"SELECT seq, id, topic, type, failed_at, coalesce(error, '') FROM {t}"  # checked  # nosec B608
        f" WHERE {_FAILED} ORDER BY seq LIMIT %s", (limit,)).fetchall()
    return [FailedRow(*r) for r in rows]


def retry_failed(conn: psycopg.Connection[Any], table: str,
                 ids: Sequence[str] | None = None) -> int:
    """Clear the failed mark of the selected rows (the relays claim them again, woken by a
    NOTIFY at commit); how many."""
    t = check_table(table)
    where, params = _where(ids)
    n = conn.execute(f"UPDATE {t} SET failed_at = NULL, error = NULL"  # checked  # nosec B608
                     f" WHERE {where}", params).rowcount
    if n:
        conn.execute("SELECT pg_notify(%s, '')", (channel(t),))
    return n


def delete_failed(conn: psycopg.Connection[Any], table: str,
                  ids: Sequence[str] | None = None) -> int:
    """Delete the selected failed rows (their events are never published); how many."""
    t = check_table(table)
    where, params = _where(ids)
    return conn.execute(f"DELETE FROM {t} WHERE {where}", params).rowcount  # checked  # nosec B608
