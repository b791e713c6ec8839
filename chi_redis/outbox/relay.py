"""The outbox relay: claim unpublished rows, publish them, mark them, commit.

One batch is one PostgreSQL transaction::

    SELECT ... WHERE published_at IS NULL AND failed_at IS NULL ORDER BY seq LIMIT n
        FOR UPDATE SKIP LOCKED
    -- publish the events through the bus's write path (one publish-script call),
    -- each with the outbox row id (the event id) as its idempotency key
    UPDATE ... SET published_at = now() WHERE seq = ANY(...)   -- or DELETE
    UPDATE ... SET failed_at = now(), error = ... WHERE seq = ...  -- rows that are no event
    COMMIT

A row that cannot become a valid event (a name the event model refuses, an unknown
encoding, an undecodable or too deeply nested payload, an event over the bus's
``max_event_bytes``) would fail every pass and block every row after it: it is marked
failed instead, in the batch's transaction, and logged once at ERROR with its ``seq``, id
and reason (never its payload); the rest of the batch is published in order.  An operator
lists, retries or deletes failed rows (:mod:`chi_redis.outbox.failed`).

``SKIP LOCKED`` lets several relays share a table: each claims rows the others have not
locked.  A relay that dies after publishing and before committing leaves its rows
unpublished (its transaction rolls back); whoever claims them next publishes them again, and
the publish script writes nothing for an event id (or idempotency key) already written, so
no stream entry is ever duplicated.  Order: one relay publishes in ``seq`` order; several
relays may interleave batches.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import ChiError, DecodeError, RedisError, ValidationError, scrub
from ..events.codec import us_to_datetime
from ..events.event import Event, MetaValue
from .schema import DEFAULT_TABLE, channel, check_table

if TYPE_CHECKING:
    import psycopg

    from ..publish.bus import EventBus

__all__ = ["CRASH_AFTER_PUBLISH_ENV", "OutboxError", "OutboxStats", "Relay", "dsn_password"]

logger = logging.getLogger("chi_redis.outbox")

#: Test hook: ``1`` makes the relay process exit (``os._exit(137)``, like ``kill -9``) right
#: after it published its first batch and before it marked it; ``stop`` makes it stop
#: itself there (SIGSTOP), for the test to ``kill -9`` it.
CRASH_AFTER_PUBLISH_ENV = "CHI_OUTBOX_CRASH_AFTER_PUBLISH"
_META = msgspec.json.Decoder(dict[str, MetaValue])
_SLICE_S = 0.2  # longest uninterrupted wait: a stop request is seen this fast
#: What a row that cannot become a valid event raises while it is turned into one.
_POISON = (ValidationError, DecodeError, ValueError, TypeError, OverflowError,
           msgspec.MsgspecError)
_REASON_CHARS = 300
_ID_CHARS = 130  # an event id has at most 128 characters; a poison row's may be longer
# One pass over the unpublished rows (its partial index); failed rows are never published.
_STATS = ("SELECT count(*) FILTER (WHERE failed_at IS NULL), coalesce(extract(epoch FROM"
          " now() - min(created_at) FILTER (WHERE failed_at IS NULL)), 0),"
          " count(*) FILTER (WHERE failed_at IS NOT NULL)"
          " FROM {t} WHERE published_at IS NULL")  # a check_table()'d name  # nosec B608


Poison = tuple[int, str, str]  # a row that is no event: (seq, id, reason)


class OutboxError(ChiError):
    """The outbox database refused a command or could not be reached."""


def dsn_password(dsn: str) -> str:
    """The password ``dsn`` carries (URL or ``key=value`` form), ``""`` if none."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        return str(conninfo_to_dict(dsn).get("password") or "")
    except Exception:  # an unparsable DSN: psycopg reports it when connecting
        return ""


@dataclass(frozen=True)
class OutboxStats:
    """What is waiting in the outbox: unpublished rows, the oldest one's age, failed rows."""

    backlog: int  # rows waiting to be published (failed rows not included)
    lag_s: float  # the oldest waiting row's age
    published: int  # events this relay published since it started
    failed: int = 0  # rows of the table marked failed (all relays'), until retried or deleted

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Relay:
    """Publishes the rows of an outbox table onto their topic streams (see the module doc).

    ``dsn`` is a libpq connection string or URL; it appears in no message or log (errors
    are scrubbed of its password).  ``keep_s``: published rows older than this are deleted
    by :meth:`cleanup` (None: kept); with ``delete_published`` rows are deleted at once.
    """

    def __init__(
        self, dsn: str, bus: EventBus, *, table: str = DEFAULT_TABLE, batch_size: int = 500,
        poll_interval_s: float = 5.0, delete_published: bool = False,
        keep_s: float | None = 7 * 86400.0, cleanup_interval_s: float = 60.0,
    ) -> None:
        if batch_size < 1 or poll_interval_s <= 0:
            raise ValueError("batch_size must be ≥ 1 and poll_interval_s positive")
        self.dsn = dsn
        self.bus = bus
        self.table = check_table(table)
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.delete_published = delete_published
        self.keep_s = keep_s
        self.cleanup_interval_s = cleanup_interval_s
        self.published = 0
        self.failed = 0  # rows this relay marked failed since it started
        self._secret = dsn_password(dsn)
        self._conn: psycopg.Connection[Any] | None = None
        self._listen: psycopg.Connection[Any] | None = None
        self._stop = threading.Event()
        self._crash = os.environ.get(CRASH_AFTER_PUBLISH_ENV, "")
        # The table name is check_table()'d (a lower-case identifier), values are parameters.
        t = self.table
        cols = "seq, id, topic, type, ts, version, metadata, enc, data"
        self._claim = (f"SELECT {cols} FROM {t}"  # checked name  # nosec B608
                       " WHERE published_at IS NULL AND failed_at IS NULL"
                       " ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED")
        self._mark = (f"DELETE FROM {t} WHERE seq = ANY(%s)"  # checked name  # nosec B608
                      if delete_published else
                      f"UPDATE {t} SET published_at = now() WHERE seq = ANY(%s)")  # checked name  # nosec B608
        self._fail = (f"UPDATE {t} SET failed_at = now(), error = %s"  # checked name  # nosec B608
                      " WHERE seq = %s")

    def __repr__(self) -> str:
        return f"Relay(table={self.table!r}, bus={self.bus!r})"

    # connections --------------------------------------------------------------------------
    def _error(self, exc: BaseException) -> OutboxError:
        text = " ".join(scrub(str(exc), self._secret).split()) or type(exc).__name__
        return OutboxError(f"outbox database: {text}")

    def _connect(self, **options: Any) -> psycopg.Connection[Any]:
        import psycopg

        try:
            return psycopg.connect(self.dsn, connect_timeout=5, **options)
        except psycopg.Error as exc:
            raise self._error(exc) from None

    def conn(self) -> psycopg.Connection[Any]:
        """The claiming connection (opened on first use, reopened after a failure)."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        """Close the relay's connections (the bus is the caller's)."""
        for c in (self._conn, self._listen):
            if c is not None:
                c.close()
        self._conn = self._listen = None

    # one batch ----------------------------------------------------------------------------
    def _event(self, row: tuple[Any, ...]) -> Event:
        """The event of ``row``, checked as the publish will check it (raises ``_POISON``).

        The payload is decoded once to refuse what consumers could not decode (corrupt,
        nested too deeply); it is published as recorded (``msgspec.Raw``) when the row's
        encoding is the bus's.
        """
        _seq, id_, topic, type_, ts, version, meta, enc, data = row
        codec = self.bus.codec
        tag, raw = enc.encode(), bytes(data)
        decoded = _column("data", codec.decode_untyped, tag, raw)
        payload: Any = msgspec.Raw(raw) if tag == codec.enc_tag else decoded
        metadata = _column("metadata", _META.decode, meta) if meta != "{}" else {}
        event = Event(type=type_, topic=topic, id=id_, timestamp=_column("ts", us_to_datetime, ts),
                      version=version, metadata=metadata, data=payload)
        codec.encode_parts(event)  # names, nesting and max_event_bytes, as the writer does
        return event

    def _sort(self, rows: list[tuple[Any, ...]]) -> tuple[list[Event], list[Poison]]:
        """The rows' events in ``seq`` order, and the rows that cannot become one."""
        events: list[Event] = []
        poison: list[Poison] = []
        for row in rows:
            try:
                events.append(self._event(row))
            except _POISON as exc:
                poison.append((row[0], row[1], _reason(exc)))
        return events, poison

    def relay_batch(self) -> int:
        """Claim, publish, mark and commit one batch; how many rows it settled (published,
        or marked failed: :attr:`failed`).

        On a database error the batch is rolled back (its events, maybe already written,
        stay claimable: a retry writes nothing twice) and :class:`OutboxError` is raised;
        a Redis error rolls back too and propagates.
        """
        import psycopg

        conn = self.conn()
        try:
            with conn.transaction():
                rows = conn.execute(self._claim, (self.batch_size,)).fetchall()
                if not rows:
                    return 0
                events, poison = self._sort(rows)
                if events:
                    self.bus.writer.write(events, [f"outbox:{e.id}" for e in events])
                if self._crash:
                    _crash_hook(self._crash)
                if poison:
                    with conn.cursor() as cur:
                        cur.executemany(self._fail, [(why, seq) for seq, _id, why in poison])
                bad = {seq for seq, _id, _why in poison}
                if events:
                    conn.execute(self._mark, ([r[0] for r in rows if r[0] not in bad],))
        except psycopg.Error as exc:
            self._discard(conn)
            raise self._missing_columns(exc) or self._error(exc) from None
        for seq, id_, why in poison:  # once: the mark is committed, no relay claims it again
            logger.error("outbox relay: row seq=%d id=%r cannot be published, marked failed:"
                         " %s", seq, id_[:_ID_CHARS], why)
        self.published += len(events)
        self.failed += len(poison)
        return len(rows)

    def _missing_columns(self, exc: BaseException) -> OutboxError | None:
        import psycopg

        if not isinstance(exc, psycopg.errors.UndefinedColumn):
            return None
        return OutboxError(f"outbox table {self.table} has no failed_at/error columns (made by"
                           " an older version): run `chi-redis outbox init` to upgrade it")

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        if conn.broken or conn.closed:
            conn.close()
            self._conn = None

    def drain(self) -> int:
        """Publish batches until the outbox has no unpublished row left (or stop); the count."""
        total = 0
        while not self._stop.is_set():
            n = self.relay_batch()
            total += n
            if n < self.batch_size:
                break
        return total

    def cleanup(self) -> int:
        """Delete published rows older than ``keep_s``; how many were deleted."""
        if self.keep_s is None or self.delete_published:
            return 0
        import psycopg

        conn = self.conn()
        try:
            with conn.transaction():
                cur = conn.execute(
                    f"DELETE FROM {self.table} WHERE published_at IS NOT NULL"  # checked name  # nosec B608
                    " AND published_at < now() - make_interval(secs => %s)", (self.keep_s,))
                return cur.rowcount
        except psycopg.Error as exc:
            self._discard(conn)
            raise self._error(exc) from None

    def stats(self) -> OutboxStats:
        """The backlog (rows waiting to be published), the lag (the oldest one's age, 0 when
        none) and the rows marked failed.

        Opens its own short-lived connection, so any thread (a metrics collector) may ask.
        """
        import psycopg

        try:
            with self._connect(autocommit=True) as conn:
                row = conn.execute(_STATS.format(t=self.table)).fetchone()
        except psycopg.Error as exc:
            raise self._missing_columns(exc) or self._error(exc) from None
        assert row is not None
        return OutboxStats(backlog=int(row[0]), lag_s=max(0.0, float(row[1])),
                           published=self.published, failed=int(row[2]))

    # running ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to return after the batch in progress (any thread, signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def _listener(self) -> psycopg.Connection[Any]:
        if self._listen is None or self._listen.closed:
            self._listen = self._connect(autocommit=True)
            try:
                self._listen.execute(f"LISTEN {channel(self.table)}")
            except Exception:
                self._listen.close()
                self._listen = None
                raise
        return self._listen

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a NOTIFY (or a stop); whether one came."""
        import psycopg

        listen = self._listener()
        deadline = time.monotonic() + timeout
        try:
            while not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if any(True for _ in listen.notifies(timeout=min(left, _SLICE_S),
                                                      stop_after=1)):
                    # Others may have queued up meanwhile: one drain serves them all.
                    for _ in listen.notifies(timeout=0):
                        pass
                    return True
        except psycopg.Error as exc:
            listen.close()
            self._listen = None
            raise self._error(exc) from None
        return False

    def run(self, *, once: bool = False,
            on_error: Callable[[ChiError], None] | None = None) -> int:
        """Relay until :meth:`stop` (``once``: drain, clean up, return); the events published.

        Wakes on the table's NOTIFY, else every ``poll_interval_s``.  Database and Redis
        errors are reported to ``on_error`` (default: a warning in the log) and retried with
        a growing pause (up to 5 s): the relay outlives restarts of both.  With ``once``
        they propagate.
        """
        backoff = 0.1
        next_cleanup = 0.0
        start = self.published
        while not self._stop.is_set():
            try:
                if not once:
                    self._listener()  # listen first: a row added meanwhile notifies
                self.drain()
                if time.monotonic() >= next_cleanup and not self._stop.is_set():
                    self.cleanup()
                    next_cleanup = time.monotonic() + self.cleanup_interval_s
                if once:
                    break
                backoff = 0.1
                self.wait(self.poll_interval_s)
            except (OutboxError, RedisError) as exc:
                if once:
                    raise
                (on_error or _log_error)(exc)
                self.close()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        return self.published - start


def _crash_hook(how: str) -> None:
    """The test hook between publish and mark (``CRASH_AFTER_PUBLISH_ENV``)."""
    if how == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif how == "1":
        os._exit(137)


def _column(name: str, decode: Callable[..., Any], *args: Any) -> Any:
    """``decode(*args)``; what it raises names the outbox column (``ValueError``)."""
    try:
        return decode(*args)
    except _POISON as exc:
        raise ValueError(f"{name}: {exc}") from None


def _reason(exc: BaseException) -> str:
    """``exc`` as one short line (the row's names may be anything: no newlines, and no NUL,
    which a PostgreSQL text column refuses)."""
    text = " ".join(str(exc).replace("\x00", "\\x00").split()) or type(exc).__name__
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def _log_error(exc: ChiError) -> None:
    logger.warning("outbox relay: %s (retrying)", exc)
