"""Configuration: the ``events:`` section of a YAML file, then the environment on top.

Precedence: CLI flag > environment (``CHI_*``) > YAML file > default.  Unknown keys, wrong
types and bad values are errors of one line that name the path
(``Object contains unknown field `adress` - at `$.events.bus.redis```).  Every key is in
docs/configuration.md.  :func:`bus_from_config` is the one place a Config becomes a bus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checks import parse_duration_ms, parse_size, rule_subscription_name
from .load import ENV_VARS, load_config
from .schema import (
    BusConfig,
    Config,
    ConfigFile,
    FilterConfig,
    MonitoringConfig,
    RedisConfig,
    ReplayConfig,
    RetentionConfig,
    RetentionPolicy,
    RuleConfig,
    StoreConfig,
    WorkerConfig,
)

if TYPE_CHECKING:
    from ..publish.aio import AsyncEventBus
    from ..publish.buffered import BufferedPublisher
    from ..publish.bus import EventBus
    from ..runtime.broker import BrokerOptions

__all__ = [
    "ENV_VARS",
    "BusConfig",
    "Config",
    "ConfigFile",
    "FilterConfig",
    "MonitoringConfig",
    "RedisConfig",
    "ReplayConfig",
    "RetentionConfig",
    "RetentionPolicy",
    "RuleConfig",
    "StoreConfig",
    "WorkerConfig",
    "broker_options_from_config",
    "bus_from_config",
    "load_config",
    "parse_duration_ms",
    "parse_size",
    "publisher_from_config",
    "rule_subscription_name",
]


def bus_from_config(config: Config, *, url: str | None = None, namespace: str | None = None,
                    **options: Any) -> EventBus:
    """The bus ``config`` describes (``url``/``namespace``: a CLI flag's value, which wins).

    ``bus.type: redis`` connects to ``bus.redis``; ``memory`` is the embedded bus
    (``EventBus.embedded``: an in-process Redis, no server).
    """
    from ..errors import ConfigError
    from ..publish.bus import EventBus  # here: importing the config costs no redis-py

    ns = namespace or config.namespace
    common: dict[str, Any] = {
        "encoding": config.bus.encoding, "max_event_bytes": config.bus.max_event_bytes,
        "idempotency_ttl_ms": config.bus.idempotency_ttl_ms,
    }
    if config.bus.type == "memory":
        return EventBus.embedded(namespace=ns, **common, **options)
    if config.bus.type != "redis":  # load_config already refused these
        raise ConfigError(f"bus.type {config.bus.type!r} is not available yet")
    from ..backend.connection import connect

    target = url or config.bus.redis.effective_url()
    client = connect(target, **config.bus.redis.client_options(target))
    return EventBus(client, namespace=ns, **common, **options)


def broker_options_from_config(config: Config) -> BrokerOptions:
    """The :class:`~chi_redis.runtime.broker.BrokerOptions` the ``worker`` section describes."""
    from ..runtime.broker import BrokerOptions

    w = config.worker
    return BrokerOptions(
        lease_ms=w.lease_ms, reclaim_interval_ms=w.reclaim_interval_ms,
        max_deliveries=w.max_deliveries, block_ms=w.block_ms, prefetch=w.prefetch,
        max_prefetch=w.max_prefetch,
    )


def publisher_from_config(config: Config, bus: AsyncEventBus, **options: Any) -> BufferedPublisher:
    """A :class:`BufferedPublisher` on ``bus`` whose capacity is ``bus.buffer_size``."""
    from ..publish.buffered import BufferedPublisher

    options.setdefault("max_buffer", config.bus.buffer_size)
    return BufferedPublisher(bus, **options)
