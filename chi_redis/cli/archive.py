"""``chi-redis archive run`` (the archiver alone) and ``chi-redis store init`` (the table)."""

from __future__ import annotations

import signal
from typing import Any

import click

from .options import common_options, settings

__all__ = ["archive", "store_group"]


@click.group()
def archive() -> None:
    """The archiver: copy events into the configured database or file store."""


@archive.command("run")
@common_options
@click.option("--batch-size", "-b", type=click.IntRange(1, 10_000), default=None,
              help="Entries read (and stored in one commit) per stream per round trip."
                   "  [default: store.archive.batch_size]")
@click.option("--block-ms", type=click.IntRange(1, 60_000), default=1_000, show_default=True,
              help="How long a read waits for new entries.")
@click.option("--consumer", default=None, metavar="NAME",
              help="Consumer name in the chi-archive group (stable across restarts: a"
                   " restarted archiver re-reads its own pending batch at once).")
@click.option("--lease-ms", type=click.IntRange(100, 3_600_000), default=60_000,
              show_default=True,
              help="Entries of other consumers idle this long are taken over.")
@click.option("--threads", "-t", type=click.IntRange(1, 64), default=None, hidden=True,
              help="Ignored (the archiver is one batch loop now); kept for old scripts.")
def run(batch_size: int | None, block_ms: int, consumer: str | None, lease_ms: int,
        threads: int | None) -> None:
    """Run the archiver batch loop until SIGTERM or Ctrl-C (the batch in hand is stored
    and acknowledged first)."""
    from ..config import store_from_config
    from ..ops.archive_loop import ArchiveLoop

    s = settings()
    cfg = s.config
    if not cfg.store.enabled or cfg.store.type == "memory":
        raise click.UsageError("the archiver needs store.type: database or file in the config")
    bus = s.bus()
    store = store_from_config(cfg, bus=bus)
    a = cfg.store.archive
    loop = ArchiveLoop(bus, store, types=a.types, topics=a.topics,
                       batch_size=batch_size or a.batch_size, block_ms=block_ms,
                       lease_ms=lease_ms, consumer=consumer)

    def on_signal(signum: int, frame: Any) -> None:
        loop.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(f"archiving into {store!r} as consumer {loop.consumer}", err=True)
    stats = loop.run()
    click.echo(f"archived {stats.stored} events ({stats.skipped} skipped,"
               f" {stats.dead_lettered} dead-lettered)", err=True)
    close: Any = getattr(store, "close", None)
    if close is not None:
        close()


@click.group("store")
def store_group() -> None:
    """The persistent event store: create its table."""


@store_group.command("init")
@common_options
@click.option("--print-sql", is_flag=True, help="Print the SQL instead of running it.")
def init(print_sql: bool) -> None:
    """Create the database store's table and indexes (store.database.table_name)."""
    from ..config import database_dsn
    from ..store.postgres import PostgresEventStore, create_table_sql

    cfg = settings().config
    table = cfg.store.database.table_name
    if print_sql:
        click.echo(create_table_sql(table).rstrip())
        return
    with PostgresEventStore(database_dsn(cfg), table) as store:
        store.init()
    click.echo(f"table {table} ready")
