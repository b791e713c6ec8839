"""``chi-redis demo``: the tour of :mod:`chi_redis.demo`, on Redis or on the embedded bus.

On Redis when one answers at the configured URL (the handlers then run in a real
``dramatiq`` worker process); otherwise, with ``--embedded``, or when the config says
``bus.type: memory`` (and no ``--redis-url`` is given), on the embedded bus: an in-process
server and an in-process worker, so the tour needs nothing but Python.
"""

from __future__ import annotations

import click

from .options import common_options, settings

__all__ = ["demo"]


@click.command()
@common_options
@click.option("--embedded", is_flag=True,
              help="Use the embedded bus (in-process, no server) even when Redis answers.")
@click.option("--keep", is_flag=True, help="Keep the demo's keys (on Redis).")
@click.option("--handlers/--no-handlers", default=True, show_default=True,
              help="Run the example handlers.")
def demo(embedded: bool, keep: bool, handlers: bool) -> None:
    """Tour: publish, query, run the example handlers (no Redis needed)."""
    # Imported here: the tour pulls in redis-py, dramatiq and the example app.
    from ..demo import tour
    from ..errors import RedisUnavailableError
    from ..publish.bus import EventBus

    s = settings()
    namespace = s.namespace or "demo"
    url = s.redis_url
    if embedded or (not s.url and s.config.bus.type == "memory"):
        bus = EventBus.embedded(namespace=namespace)
    else:
        bus = EventBus.from_url(url, namespace=namespace, socket_connect_timeout=2.0)
        try:
            bus.call_once(bus.client.ping)
        except RedisUnavailableError:
            bus.close()
            click.echo(f"no Redis answers at {bus.url}: running on the embedded bus"
                       " (in-process, nothing to install; --redis-url to use a server)")
            bus = EventBus.embedded(namespace=namespace)
    tour(bus, url, handlers=handlers, keep=keep)
