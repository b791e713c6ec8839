"""The module ``dramatiq`` loads: ``dramatiq chi_redis.worker my_handlers``.

Like ``__main__``, this entry point reads the environment at import (docs/design.md §9.5):
``CHI_REDIS_URL``, ``CHI_NAMESPACE``, ``CHI_CONFIG`` and the tuning variables
``CHI_LEASE_MS``, ``CHI_RECLAIM_INTERVAL_MS``, ``CHI_MAX_DELIVERIES``; ``CHI_BUS_TYPE=memory``
builds an embedded bus instead (this process's own in-process server, for
:mod:`chi_redis.testing`).  It builds ``bus``
and ``broker``, sets the broker and the msgspec encoder explicitly, and exposes both, so
handler modules register with::

    from chi_redis.worker import bus

    @bus.subscribe("welcome-email", types=["user.created"])
    def welcome(event): ...
"""

from __future__ import annotations

import os

import dramatiq

from .backend.connection import connect
from .config import load_config
from .errors import ConfigError
from .publish.bus import EventBus
from .runtime.broker import BrokerOptions, StreamsBroker
from .runtime.encoder import MsgpackEncoder

__all__ = ["broker", "bus", "config"]

config = load_config(env=os.environ)
_bus_type = os.environ.get("CHI_BUS_TYPE") or "redis"
if _bus_type not in ("redis", "memory"):
    raise ConfigError(f"CHI_BUS_TYPE must be redis or memory, got {_bus_type!r}")
if _bus_type == "memory":  # an embedded bus: this process's own in-process server
    bus = EventBus.embedded(
        namespace=config.namespace, encoding=config.bus.encoding,
        max_event_bytes=config.bus.max_event_bytes,
        idempotency_ttl_ms=config.bus.idempotency_ttl_ms,
    )
else:
    bus = EventBus(
        connect(
            config.redis.url,
            socket_timeout=config.redis.socket_timeout_s,
            socket_connect_timeout=config.redis.socket_connect_timeout_s,
        ),
        namespace=config.namespace,
        encoding=config.bus.encoding,
        max_event_bytes=config.bus.max_event_bytes,
        idempotency_ttl_ms=config.bus.idempotency_ttl_ms,
    )
_middleware = None
if config.worker.metrics_port:
    # Dramatiq's exposition server runs in a process forked from the dramatiq master, which
    # never imports this module: its port and multiprocess directory come from the
    # environment of the `dramatiq` command (`chi-redis worker` sets both).
    import logging

    from dramatiq.middleware import default_middleware

    if os.environ.get("dramatiq_prom_port") != str(config.worker.metrics_port):  # noqa: SIM112
        logging.getLogger(__name__).warning(
            "metrics_port is %s but dramatiq_prom_port is %r: set dramatiq_prom_port (and a"
            " dramatiq_prom_db directory per worker group) in the worker's environment",
            config.worker.metrics_port, os.environ.get("dramatiq_prom_port"),  # noqa: SIM112
        )
    from dramatiq.middleware.prometheus import Prometheus

    _middleware = [m() for m in default_middleware] + [Prometheus()]
broker = StreamsBroker(
    bus,
    middleware=_middleware,
    options=BrokerOptions(
        lease_ms=config.worker.lease_ms,
        reclaim_interval_ms=config.worker.reclaim_interval_ms,
        max_deliveries=config.worker.max_deliveries,
        block_ms=config.worker.block_ms,
        prefetch=config.worker.prefetch,
        max_prefetch=config.worker.max_prefetch,
    ),
)
dramatiq.set_broker(broker)
dramatiq.set_encoder(MsgpackEncoder())
