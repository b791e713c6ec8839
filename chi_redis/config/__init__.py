"""Configuration: the ``events:`` section of a YAML file, then the environment on top.

Precedence: CLI flag > environment (``CHI_*``) > YAML file > default.  Unknown keys, wrong
types and bad values are errors of one line that name the path
(``Object contains unknown field `adress` - at `$.events.bus.redis```).  Every key is in
docs/configuration.md.  :func:`bus_from_config` is the one place a Config becomes a bus,
:func:`store_from_config` the one place it becomes an event store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .checks import parse_duration_ms, parse_size, rule_subscription_name
from .load import ENV_VARS, load_config
from .schema import (
    ArchiveConfig,
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
    from ..bridges import Bus
    from ..publish.aio import AsyncEventBus
    from ..publish.buffered import BufferedPublisher
    from ..publish.bus import EventBus
    from ..runtime.broker import BrokerOptions
    from ..store import EventStore

__all__ = [
    "ENV_VARS",
    "ArchiveConfig",
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
    "bridge_from_config",
    "broker_options_from_config",
    "bus_from_config",
    "database_dsn",
    "load_config",
    "parse_duration_ms",
    "parse_size",
    "publisher_from_config",
    "rule_subscription_name",
    "store_from_config",
]


def bus_from_config(config: Config, *, url: str | None = None, namespace: str | None = None,
                    detect_cluster: bool = True, **options: Any) -> EventBus:
    """The bus ``config`` describes (``url``/``namespace``: a CLI flag's value, which wins).

    A Redis Cluster node's address gives a cluster client (asked now, one round trip;
    ``detect_cluster=False``: later, by ``bus.adopt_cluster()``).

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
    acks: dict[str, Any] = {"acks": config.bus.acks, "min_replicas": config.bus.min_replicas,
            "ack_timeout_ms": config.bus.ack_timeout_ms}
    if config.bus.type == "memory":
        return EventBus.embedded(namespace=ns, **common, **options)
    if config.bus.type == "rabbitmq":
        raise ConfigError(
            "not supported on bus.type 'rabbitmq': this needs the Redis event store (queries"
            " and replay stay there; give --redis-url for a Redis bus); publish, worker, tail,"
            " dlq and stats work on RabbitMQ (docs/buses.md)")
    if config.bus.type == "kafka":  # a bridge, not an EventBus (chi_redis.bridges.kafka)
        raise ConfigError(
            "not supported on bus.type 'kafka': this needs the Redis event store (queries"
            " and replay stay there; give --redis-url for a Redis bus); publish, worker, tail,"
            " dlq and stats work on Kafka (docs/buses.md)")
    if config.bus.type != "redis":  # load_config already refused these
        raise ConfigError(f"bus.type {config.bus.type!r} is not available yet")
    from ..backend.connection import connect

    target = url or config.bus.redis.effective_url()
    client = connect(target, detect_cluster=detect_cluster,
                     **config.bus.redis.client_options(target))
    bus = EventBus(client, namespace=ns, **common, **acks, **options)
    bus.cluster_unknown = not detect_cluster
    for topic, tc in config.topics.items():  # checked against Redis at first use (§15.1)
        bus.partitions.configure(topic, tc.partitions, tc.partition_key)
    return bus


def bridge_from_config(config: Config, *, namespace: str | None = None) -> Bus:
    """The bridge bus ``config`` names (``bus.type: rabbitmq`` or ``kafka``): a
    :class:`~chi_redis.bridges.Bus` over another broker, for publishing and handlers."""
    from ..errors import ConfigError

    if config.bus.type == "rabbitmq":
        from ..bridges.rabbitmq import RabbitMQEventBus

        return RabbitMQEventBus.from_config(config, namespace=namespace)
    if config.bus.type == "kafka":
        from ..bridges.kafka import KafkaEventBus

        return KafkaEventBus.from_config(config, namespace=namespace)
    raise ConfigError(f"bus.type {config.bus.type!r} is not a bridge bus")


def broker_options_from_config(config: Config) -> BrokerOptions:
    """The :class:`~chi_redis.runtime.broker.BrokerOptions` the ``worker`` section describes."""
    from ..runtime.broker import BrokerOptions

    w = config.worker
    return BrokerOptions(
        lease_ms=w.lease_ms, reclaim_interval_ms=w.reclaim_interval_ms,
        max_deliveries=w.max_deliveries, block_ms=w.block_ms, prefetch=w.prefetch,
        max_prefetch=w.max_prefetch, inline_when_idle=w.inline_when_idle,
    )


def publisher_from_config(config: Config, bus: AsyncEventBus, **options: Any) -> BufferedPublisher:
    """A :class:`BufferedPublisher` on ``bus`` whose capacity is ``bus.buffer_size``."""
    from ..publish.buffered import BufferedPublisher

    options.setdefault("max_buffer", config.bus.buffer_size)
    return BufferedPublisher(bus, **options)


def database_dsn(config: Config, env: Mapping[str, str] | None = None) -> str:
    """The database connection string: ``CHI_DATABASE_URL``, else ``store.database.dsn``.

    Never print it: it may carry a password.
    """
    from ..errors import ConfigError

    environ = os.environ if env is None else env
    dsn = environ.get("CHI_DATABASE_URL") or config.store.database.dsn
    if not dsn:
        raise ConfigError("store.type: database needs a connection string: set"
                          " store.database.dsn or CHI_DATABASE_URL")
    return dsn


def store_from_config(config: Config, *, bus: EventBus | None = None,
                      env: Mapping[str, str] | None = None,
                      read_only: bool = False) -> EventStore:
    """The event store ``config.store`` describes.

    ``memory``: the history in the bus's own streams (``bus.store``; ``bus``, or the bus
    :func:`bus_from_config` makes); ``database``: a
    :class:`~chi_redis.store.postgres.PostgresEventStore` on ``store.database`` (its table
    created when missing); ``file``: a :class:`~chi_redis.store.files.FileEventStore` on
    ``store.file`` (this process becomes its one writer, unless ``read_only``: a reader,
    e.g. a replay from the archive while the archiver runs).
    """
    from ..errors import ConfigError

    s = config.store
    if not s.enabled:
        raise ConfigError("store.enabled is false: no event store is configured")
    if s.type == "database":
        from ..store.postgres import PostgresEventStore

        pg = PostgresEventStore(database_dsn(config, env), s.database.table_name)
        pg.init()
        return pg
    if s.type == "file":
        from ..store.files import FileEventStore

        return FileEventStore(s.file.directory, max_file_size=parse_size(s.file.max_file_size),
                              max_files=s.file.max_files, read_only=read_only)
    return (bus or bus_from_config(config)).store
