"""``chi-redis metrics``: the standalone exporter of the stream gauges and health endpoints.

One per deployment (Procfile ``metrics:``): the gauges describe Redis, not a process, so
exporting them from every worker would multiply them.  Serves ``/metrics`` (the ``chi_*``
gauges, :mod:`chi_redis.observe.gauges`), ``/healthz`` and ``/readyz``
(:mod:`chi_redis.observe.server`) until SIGTERM or Ctrl-C.

The outbox gauges are exported when a database is configured: ``--dsn``, else
``CHI_DATABASE_URL``, else the config's ``store.database.dsn``; the DSN is never printed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import click

from .health import subscription_options
from .options import common_options, settings

if TYPE_CHECKING:
    from ..outbox.relay import OutboxStats

__all__ = ["metrics_cmd"]


@click.command("metrics")
@common_options
@click.option("--port", type=click.IntRange(0, 65535), default=9180, show_default=True,
              help="Port to listen on (0: any free port, printed on stderr).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--dsn", metavar="DSN", help="Outbox database for chi_outbox_* (else"
              " $CHI_DATABASE_URL, the config's store.database.dsn; none: no outbox gauges).")
@click.option("--outbox-table", metavar="NAME",
              help="Outbox table (default: config outbox.table_name).")
@subscription_options
def metrics_cmd(port: int, host: str, dsn: str | None, outbox_table: str | None,
                max_lag: int | None, subscriptions: tuple[str, ...]) -> None:
    """Serve the stream gauges on /metrics and health on /healthz, /readyz."""
    from prometheus_client import CollectorRegistry

    from ..observe.gauges import StreamGauges
    from ..observe.server import HealthServer

    s = settings()
    bus = s.bus()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamGauges(bus, outbox=_outbox(dsn, outbox_table)))
    names = sorted(subscriptions) or None
    server = HealthServer(bus, host=host, port=port, registry=registry, max_lag=max_lag,
                          subscriptions=lambda: names)

    def on_term(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever(), which runs in this (the main) thread.
        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, on_term)
    click.echo(f"chi-redis metrics: serving http://{host}:{server.port}/metrics", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.httpd.server_close()
        bus.close()
    click.echo("chi-redis metrics: stopped", err=True)


def _outbox(dsn: str | None, table: str | None) -> Callable[[], OutboxStats] | None:
    s = settings()
    found = dsn or s.config.store.database.dsn
    if not found:
        return None
    from ..outbox.relay import Relay

    return Relay(found, s.bus(), table=table or s.config.outbox.table_name).stats
