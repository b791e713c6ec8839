"""``chi-redis archive run`` (the archiver alone) and ``chi-redis store init`` (the table)."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from .options import common_options, settings

__all__ = ["archive", "store_group"]


@click.group()
def archive() -> None:
    """The archiver: copy events into the configured database or file store."""


@archive.command("run")
@common_options
@click.option("--threads", "-t", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Worker threads (they share the batching writer).")
def run(threads: int) -> None:
    """Run the archiver subscription until SIGTERM or Ctrl-C."""
    import dramatiq

    from ..config import store_from_config
    from ..ops.archive import install_archiver
    from ..runtime.broker import StreamsBroker
    from ..runtime.encoder import MsgpackEncoder

    s = settings()
    cfg = s.config
    if not cfg.store.enabled or cfg.store.type == "memory":
        raise click.UsageError("the archiver needs store.type: database or file in the config")
    bus = s.bus()
    store = store_from_config(cfg, bus=bus)
    a = cfg.store.archive
    install_archiver(bus, store, types=a.types, topics=a.topics, batch_size=a.batch_size)
    broker = StreamsBroker(bus)
    dramatiq.set_broker(broker)
    dramatiq.set_encoder(MsgpackEncoder())
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=threads)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    click.echo(f"archiving into {store!r}", err=True)
    stop.wait()
    worker.stop(timeout=30_000)
    broker.close()
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
