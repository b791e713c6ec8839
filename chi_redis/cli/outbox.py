"""``chi-redis outbox init|relay|status|failed|retry|delete``: the transactional outbox.

``failed`` lists the rows the relay marked failed (no payload), ``retry`` clears the mark
(the relays claim them again) and ``delete`` removes them: docs/outbox.md.

The database comes from ``--dsn``, else ``CHI_DATABASE_URL``, else the config's
``store.database.dsn``; it is never printed (errors are scrubbed of its password).  The
relay's other defaults come from the config's ``outbox`` section (docs/configuration.md).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from ..errors import ChiError, ConfigError
from .options import ChiGroup, common_options, emit, emit_lines, settings

if TYPE_CHECKING:
    import psycopg

    from ..outbox.relay import Relay

__all__ = ["outbox"]

_DSN_HELP = "PostgreSQL DSN (else $CHI_DATABASE_URL, the config's store.database.dsn)."


def _dsn(dsn: str | None) -> str:
    found = dsn or settings().config.store.database.dsn
    if not found:
        raise ConfigError("no outbox database: give --dsn, set CHI_DATABASE_URL or the"
                          " config's store.database.dsn")
    return found


def _table(table: str | None) -> str:
    return table or settings().config.outbox.table_name


@contextlib.contextmanager
def _connected(dsn: str | None) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the outbox database, committed at the end; errors scrubbed."""
    import psycopg

    from ..errors import scrub
    from ..outbox.relay import OutboxError, dsn_password

    target = _dsn(dsn)
    try:
        with psycopg.connect(target, connect_timeout=5) as conn:
            yield conn
    except psycopg.Error as exc:
        raise OutboxError(
            "outbox database: " + " ".join(scrub(str(exc), dsn_password(target)).split())
        ) from None


@click.group(cls=ChiGroup)
@common_options
def outbox() -> None:
    """Transactional outbox: its table, its relay to the streams, its backlog and failed rows."""


@outbox.command("init")
@common_options
@click.option("--dsn", metavar="DSN", help=_DSN_HELP)
@click.option("--table", metavar="NAME", help="Outbox table (default: config outbox.table_name).")
@click.option("--print-sql", is_flag=True, help="Print the DDL (for your migrations); run nothing.")
@click.option("--dialect", type=click.Choice(["postgres", "sqlite"]), default="postgres",
              show_default=True, help="SQL dialect of --print-sql.")
def outbox_init(dsn: str | None, table: str | None, print_sql: bool, dialect: str) -> None:
    """Create the outbox table, its indexes and its notify trigger (idempotent; upgrades a
    table made by an older version)."""
    from ..outbox import init
    from ..outbox.schema import init_sql

    name = _table(table)
    if print_sql:
        click.echo(init_sql(name, "sqlite" if dialect == "sqlite" else "postgres"), nl=False)
        return
    with _connected(dsn) as conn:
        init(conn, name)
    emit({"table": name, "created": True}, f"outbox table {name} ready")


def _relay(dsn: str | None, table: str | None, **overrides: Any) -> Relay:
    from ..config import parse_duration_ms
    from ..outbox.relay import Relay

    s = settings()
    cfg = s.config.outbox
    keep = overrides.pop("keep") or cfg.keep
    opts: dict[str, Any] = {
        "batch_size": overrides.get("batch_size") or cfg.batch_size,
        "poll_interval_s": overrides.get("poll_interval") or cfg.poll_interval_s,
        "delete_published": (cfg.delete_published if overrides.get("delete") is None
                             else overrides["delete"]),
        "keep_s": None if keep in (None, "none", "0") else parse_duration_ms(keep) / 1000,
    }
    return Relay(_dsn(dsn), s.bus(), table=_table(table), **opts)


@outbox.command("relay")
@common_options
@click.option("--dsn", metavar="DSN", help=_DSN_HELP)
@click.option("--table", metavar="NAME", help="Outbox table (default: config outbox.table_name).")
@click.option("--batch-size", type=click.IntRange(1, 10_000), help="Rows per transaction"
              " (default: config outbox.batch_size, 500).")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), metavar="SECONDS",
              help="Polling fallback when no NOTIFY comes (default: config, 5 s).")
@click.option("--delete-published/--mark-published", "delete", default=None,
              help="Delete rows once published, or mark them (default: config, mark).")
@click.option("--keep", metavar="DUR", help="Delete published rows older than DUR"
              " (default: config outbox.keep, 7d; 'none' keeps them).")
@click.option("--once", is_flag=True, help="Drain the outbox, then exit.")
def outbox_relay(dsn: str | None, table: str | None, batch_size: int | None,
                 poll_interval: float | None, delete: bool | None, keep: str | None,
                 once: bool) -> None:
    """Publish outbox rows onto their streams, exactly once (Procfile `outbox:`)."""
    relay = _relay(dsn, table, batch_size=batch_size, poll_interval=poll_interval,
                   delete=delete, keep=keep)

    def on_term(signum: int, frame: FrameType | None) -> None:
        relay.stop()

    def on_error(exc: ChiError) -> None:
        click.echo(f"outbox relay: {exc} (retrying)", err=True)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        if not once:
            click.echo(f"outbox relay: relaying table {relay.table}", err=True)
        n = relay.run(once=once, on_error=on_error)
    except KeyboardInterrupt:
        n = relay.published
    finally:
        signal.signal(signal.SIGTERM, previous)
        relay.close()
    emit({"table": relay.table, "published": n, "failed": relay.failed},
         f"outbox relay: published {n} events, marked {relay.failed} rows failed")


@outbox.command("status")
@common_options
@click.option("--dsn", metavar="DSN", help=_DSN_HELP)
@click.option("--table", metavar="NAME", help="Outbox table (default: config outbox.table_name).")
def outbox_status(dsn: str | None, table: str | None) -> None:
    """The backlog (rows waiting), lag (age of the oldest one) and failed rows."""
    from ..outbox.relay import Relay

    relay = Relay(_dsn(dsn), settings().bus(), table=_table(table))
    stats = relay.stats()
    emit({"table": relay.table, **stats.as_dict()},
         f"outbox {relay.table}: backlog {stats.backlog}, lag {stats.lag_s:.1f}s,"
         f" failed {stats.failed}")


@outbox.command("failed")
@common_options
@click.option("--dsn", metavar="DSN", help=_DSN_HELP)
@click.option("--table", metavar="NAME", help="Outbox table (default: config outbox.table_name).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
def outbox_failed(dsn: str | None, table: str | None, limit: int) -> None:
    """List the rows the relay marked failed (oldest first): id, topic, type, reason."""
    from ..outbox.failed import failed_rows

    with _connected(dsn) as conn:
        rows = failed_rows(conn, _table(table), limit)
    emit_lines((r.as_dict() for r in rows),
               lambda r: f"{r['seq']:>8}  {r['id']:<28}  {r['topic']:<16}  {r['type']:<24}  "
                         f"{r['failed_at'][:19]}  {r['error']}",
               f"{'SEQ':>8}  {'ID':<28}  {'TOPIC':<16}  {'TYPE':<24}  {'FAILED AT':<19}  ERROR")


def _selected(ids: tuple[str, ...], all_: bool) -> list[str] | None:
    if bool(ids) == all_:
        raise click.UsageError("give --id ID (repeatable) or --all")
    return list(ids) if ids else None


_ID_OPTION = click.option("--id", "ids", multiple=True, metavar="ID",
                          help="The failed row's event id (repeatable).")


@outbox.command("retry")
@common_options
@click.option("--dsn", metavar="DSN", help=_DSN_HELP)
@click.option("--table", metavar="NAME", help="Outbox table (default: config outbox.table_name).")
@_ID_OPTION
@click.option("--all", "all_", is_flag=True, help="Every failed row.")
def outbox_retry(dsn: str | None, table: str | None, ids: tuple[str, ...], all_: bool) -> None:
    """Clear the failed mark (after fixing the row): the relays claim it again."""
    from ..outbox.failed import retry_failed

    selected, name = _selected(ids, all_), _table(table)
    with _connected(dsn) as conn:
        n = retry_failed(conn, name, selected)
    emit({"table": name, "retried": n}, f"outbox {name}: {n} failed rows back in the queue")


@outbox.command("delete")
@common_options
@click.option("--dsn", metavar="DSN", help=_DSN_HELP)
@click.option("--table", metavar="NAME", help="Outbox table (default: config outbox.table_name).")
@_ID_OPTION
@click.option("--all", "all_", is_flag=True, help="Every failed row.")
def outbox_delete(dsn: str | None, table: str | None, ids: tuple[str, ...], all_: bool) -> None:
    """Delete failed rows (their events are never published); other rows are untouched."""
    from ..outbox.failed import delete_failed

    selected, name = _selected(ids, all_), _table(table)
    with _connected(dsn) as conn:
        n = delete_failed(conn, name, selected)
    emit({"table": name, "deleted": n}, f"outbox {name}: deleted {n} failed rows")
