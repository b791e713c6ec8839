"""The module ``dramatiq`` loads: ``dramatiq chi_redis.worker my_handlers``.

Like ``__main__``, this entry point reads the environment at import (docs/design.md §9.5):
``CHI_CONFIG`` (the YAML file, docs/configuration.md), ``CHI_REDIS_URL``, ``CHI_NAMESPACE``
and the other ``CHI_*`` variables.  It builds ``bus`` and ``broker``, sets the broker and the
msgspec encoder explicitly, and exposes both, so handler modules register with::

    from chi_redis.worker import bus

    @bus.subscribe("welcome-email", types=["user.created"])
    def welcome(event): ...

    @bus.handler("security_handler")  # a name the config's routing rules refer to
    def security(event): ...

The config's ``routing.rules`` become subscriptions when the worker boots, after Dramatiq
imported every handler module (see :class:`chi_redis.routing.RoutingMiddleware`).
"""

from __future__ import annotations

import os

import dramatiq

from .config import broker_options_from_config, bus_from_config, load_config
from .observe import process as _observe
from .routing import RoutingMiddleware
from .runtime.boot import FreezeHeapAtBoot, ServerSettingsCheck
from .runtime.broker import StreamsBroker
from .runtime.encoder import MsgpackEncoder

__all__ = ["broker", "bus", "config"]

config = load_config(env=os.environ)
bus = bus_from_config(config)
# Observability of this worker process: the metrics switch, CHI_LOG_FORMAT=json, tracing.
_observe.configure_process(config, os.environ)
_middleware = None
_metrics_port = config.monitoring.metrics_port if config.monitoring.metrics_enabled else None
if _metrics_port:
    # Dramatiq's exposition server runs in a process forked from the dramatiq master, which
    # never imports this module: its port and multiprocess directory come from the
    # environment of the `dramatiq` command (`chi-redis worker` sets both).
    import logging

    from dramatiq.middleware import default_middleware

    if os.environ.get("dramatiq_prom_port") != str(_metrics_port):  # noqa: SIM112
        logging.getLogger(__name__).warning(
            "metrics_port is %s but dramatiq_prom_port is %r: set dramatiq_prom_port (and a"
            " dramatiq_prom_db directory per worker group) in the worker's environment",
            _metrics_port, os.environ.get("dramatiq_prom_port"),  # noqa: SIM112
        )
    from dramatiq.middleware.prometheus import Prometheus

    _middleware = [m() for m in default_middleware] + [Prometheus()]
broker = StreamsBroker(
    bus,
    middleware=_middleware,
    options=broker_options_from_config(config),
)
# Full GC passes over the boot-time heap made the latency tail (chi_redis.runtime.boot).
broker.add_middleware(FreezeHeapAtBoot())
# A server that may evict or forget events is worth a line in every worker's log.
broker.add_middleware(ServerSettingsCheck())
if config.routing.rules:
    broker.add_middleware(RoutingMiddleware(bus, config))
if config.monitoring.health_check_enabled:  # /healthz, /readyz per worker (observe.middleware)
    from .observe.middleware import DEFAULT_HEALTH_PORT, HealthMiddleware

    broker.add_middleware(HealthMiddleware(config.monitoring.health_port or DEFAULT_HEALTH_PORT))
if config.store.archive.enabled:  # the archiver subscription (chi_redis.ops.archive)
    from .config import store_from_config
    from .ops.archive import install_archiver

    _archive = config.store.archive
    install_archiver(bus, store_from_config(config, bus=bus), types=_archive.types,
                     topics=_archive.topics, batch_size=_archive.batch_size)
dramatiq.set_broker(broker)
dramatiq.set_encoder(MsgpackEncoder())
