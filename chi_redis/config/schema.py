"""The configuration schema: msgspec Structs for the ``events:`` section of a YAML file.

Every Struct forbids unknown fields, so a typo is an error naming its path
(``Object contains unknown field `adress` - at `$.events.bus.redis```).  Every field is
listed, with its default and meaning, in ``docs/configuration.md`` (a test keeps the two in
step).  Checks msgspec cannot express (two keys that exclude each other, sizes, durations,
routing rules) are in :mod:`chi_redis.config.checks`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, field

__all__ = [
    "ArchiveConfig",
    "BusConfig",
    "Config",
    "ConfigFile",
    "DatabaseStoreConfig",
    "FileStoreConfig",
    "FilterConfig",
    "KafkaConfig",
    "MonitoringConfig",
    "OutboxConfig",
    "RabbitMQConfig",
    "RedisConfig",
    "ReplayConfig",
    "RetentionConfig",
    "RetentionPolicy",
    "RetryConfig",
    "RoutingConfig",
    "RuleConfig",
    "StoreConfig",
    "WorkerConfig",
]

Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(gt=0)]
Port = Annotated[int, Meta(ge=1, le=65535)]
BusType = Literal["memory", "redis", "kafka", "rabbitmq"]
StoreType = Literal["memory", "database", "file"]
FilterType = Literal["topic", "type", "pattern", "metadata", "all"]
MetaValue = str | int | float | bool


_SECRET_FIELDS = frozenset({"password"})
_URL_FIELDS = frozenset({"url", "dsn"})
_KV_PASSWORD = re.compile(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def _shown(name: str, value: Any) -> Any:
    """A field's value as ``repr`` shows it: passwords masked, URL/DSN credentials redacted."""
    if name in _SECRET_FIELDS and value:
        return "***"
    if name in _URL_FIELDS and isinstance(value, str):
        from ..errors import redact_url

        return _KV_PASSWORD.sub(r"\1***", redact_url(value))
    return value


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A section of the file: unknown keys are errors.  ``repr`` shows no secret (a
    config is printed in logs and tracebacks; ``msgspec.to_builtins`` still has them)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={_shown(n, getattr(self, n))!r}" for n in self.__struct_fields__)
        return f"{type(self).__name__}({fields})"


class RedisConfig(_Section):
    """``events.bus.redis``: where the Redis server is and how to reach it."""

    url: str | None = None  # a whole URL; excludes address/db/username/tls
    address: str | None = None  # host:port (default 127.0.0.1:6379)
    username: str | None = None
    password: str = ""
    password_file: str | None = None  # a file holding the password (excludes password)
    db: NonNegative = 0
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True
    socket_timeout_s: Seconds = 10.0
    socket_connect_timeout_s: Seconds = 5.0

    def effective_url(self) -> str:
        """The URL to connect to: ``url`` as given, else one built from the other keys.

        The password is never part of a built URL: it goes to the client separately (see
        :meth:`client_options`), so it appears in no URL that could be printed.
        """
        if self.url:
            return self.url
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.address or '127.0.0.1:6379'}/{self.db}"

    def secret(self) -> str:
        """The password: ``password``, else the first line of ``password_file``."""
        if self.password or not self.password_file:
            return self.password
        from ..errors import ConfigError

        try:
            with open(self.password_file) as f:
                secret = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read bus.redis.password_file {self.password_file!r}:"
                              f" {exc.strerror}") from None
        if not secret:
            raise ConfigError(f"bus.redis.password_file {self.password_file!r} is empty")
        return secret

    def client_options(self, url: str) -> dict[str, Any]:
        """redis-py options for a client of ``url`` (a password in ``url`` wins)."""
        opts: dict[str, Any] = {
            "socket_timeout": self.socket_timeout_s,
            "socket_connect_timeout": self.socket_connect_timeout_s,
        }
        password = self.secret()
        if password:
            opts["password"] = password
        if url.startswith("rediss://"):
            opts["ssl_cert_reqs"] = "required" if self.tls_verify else "none"
            for key, value in (("ssl_ca_certs", self.tls_ca_file),
                               ("ssl_certfile", self.tls_cert_file),
                               ("ssl_keyfile", self.tls_key_file)):
                if value:
                    opts[key] = value
        return opts


class KafkaConfig(_Section):
    """``events.bus.kafka``: for ``bus.type: kafka`` (chi_redis.bridges.kafka)."""

    brokers: list[str] = field(default_factory=list)
    consumer_group: str = "chi-events"  # prefix of each subscription's consumer group
    partitions: Annotated[int, Meta(ge=1, le=10_000)] = 3  # of each topic the bus creates
    replication_factor: Annotated[int, Meta(ge=1, le=100)] = 1
    # How soon the group notices a consumer that died (and how long a join takes).
    session_timeout_ms: Annotated[int, Meta(ge=1000, le=3_600_000)] = 45_000


class RabbitMQConfig(_Section):
    """``events.bus.rabbitmq``: for ``bus.type: rabbitmq`` (chi_redis.bridges.rabbitmq)."""

    url: str = "amqp://guest:guest@localhost:5672/"
    exchange: str = "chi-events"
    prefetch: Positive = 4  # unacknowledged messages per worker thread (basic.qos)
    heartbeat_s: Annotated[int, Meta(ge=0, le=3600)] = 60


class BusConfig(_Section):
    """``events.bus``: which bus, its publishers, its workers."""

    type: BusType = "redis"
    buffer_size: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000  # BufferedPublisher max_buffer
    worker_count: Positive | None = None  # worker threads; None: Dramatiq's own default (8)
    encoding: Literal["msgpack", "json"] = "msgpack"
    max_event_bytes: Annotated[int, Meta(ge=1, le=512 << 20)] = 1 << 20  # chi_redis.limits
    idempotency_ttl_ms: Annotated[int, Meta(ge=1, le=365 * 24 * 3600 * 1000)] = 24 * 3600 * 1000
    acks: Literal["master", "replicas"] = "master"  # replicas: publish waits (WAIT) for them
    min_replicas: Annotated[int, Meta(ge=1, le=100)] = 1
    ack_timeout_ms: Annotated[int, Meta(ge=1, le=60_000)] = 1_000
    redis: RedisConfig = field(default_factory=RedisConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    rabbitmq: RabbitMQConfig = field(default_factory=RabbitMQConfig)


class DatabaseStoreConfig(_Section):
    """``events.store.database``: for ``store.type: database`` (PostgreSQL)."""

    driver: str = "postgres"
    dsn: str = ""
    table_name: str = "events"


class FileStoreConfig(_Section):
    """``events.store.file``: for ``store.type: file`` (JSON lines in a directory)."""

    directory: str = ""
    max_file_size: str = "100MB"  # a size: 512KB, 100MB, 1GB
    max_files: Positive = 10


class ArchiveConfig(_Section):
    """``events.store.archive``: the archiver subscription workers run (copies events into
    the ``database`` or ``file`` store)."""

    enabled: bool = False
    types: list[str] = field(default_factory=list)  # type globs; empty: every type
    topics: list[str] = field(default_factory=list)  # empty: every topic
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 500


class StoreConfig(_Section):
    """``events.store``: where the queryable history is kept."""

    enabled: bool = True
    type: StoreType = "memory"
    database: DatabaseStoreConfig = field(default_factory=DatabaseStoreConfig)
    file: FileStoreConfig = field(default_factory=FileStoreConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)


class OutboxConfig(_Section):
    """``events.outbox``: the transactional outbox and its relay (docs/outbox.md)."""

    table_name: str = "chi_outbox"
    poll_interval_s: Seconds = 5.0  # polling fallback when no NOTIFY wakes the relay
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 500
    delete_published: bool = False  # delete rows once published instead of marking them
    keep: str | None = "7d"  # a duration: published rows older than this are deleted


class ReplayConfig(_Section):
    """``events.replay``: whether replay is allowed, and its defaults."""

    enabled: bool = True
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 500
    concurrent_workers: Annotated[int, Meta(ge=1, le=64)] = 1


class MonitoringConfig(_Section):
    """``events.monitoring``: the observability parts."""

    metrics_enabled: bool = True
    metrics_port: Port | None = None
    tracing_enabled: bool = False  # or CHI_TRACING=1 (chi_redis.observe.tracing)
    #: Each worker process serves /healthz and /readyz on ``health_port`` (default 9181).
    health_check_enabled: bool = False
    health_port: Port | None = None


class RetryConfig(_Section):
    """``events.worker.retry``: retry defaults of the subscriptions routing rules create."""

    max_retries: NonNegative = 5
    min_backoff_ms: NonNegative = 1_000
    max_backoff_ms: NonNegative = 300_000


class WorkerConfig(_Section):
    """``events.worker``: the broker's settings."""

    # Bounds: chi_redis.limits (BrokerOptions checks them again).
    lease_ms: Annotated[int, Meta(ge=1, le=7 * 24 * 3600 * 1000)] = 60_000
    reclaim_interval_ms: Annotated[int, Meta(ge=1, le=24 * 3600 * 1000)] = 5_000
    max_deliveries: Annotated[int, Meta(ge=1, le=1_000_000)] = 5
    block_ms: Annotated[int, Meta(ge=1, le=3_600_000)] = 1_000
    prefetch: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    max_prefetch: Annotated[int, Meta(ge=1, le=10_000)] = 512
    inline_when_idle: bool = True
    retry: RetryConfig = field(default_factory=RetryConfig)


class RetentionPolicy(_Section):
    """One retention policy: an age (a duration) and/or a length per topic stream."""

    max_age: str | None = None  # a duration: 30s, 15m, 7d
    max_len: Positive | None = None


class RetentionConfig(_Section):
    """``events.retention``: what ``chi-redis retention run`` trims."""

    interval_s: Seconds = 60.0
    default: RetentionPolicy = field(default_factory=RetentionPolicy)
    topics: dict[str, RetentionPolicy] = field(default_factory=dict)


class TopicConfig(_Section):
    """``events.topics.<topic>``: a partitioned topic (docs/design.md §15)."""

    partitions: Annotated[int, Meta(ge=1, le=1024)]
    partition_key: str  # "metadata.<key>" or "data.<field>"


class FilterConfig(_Section):
    """``filter`` of a routing rule."""

    type: FilterType
    values: list[MetaValue] = field(default_factory=list)
    key: str | None = None  # metadata filters only


class RuleConfig(_Section):
    """One routing rule: a subscription of ``handler`` with ``filter``."""

    handler: str  # a name registered with @bus.handler(...) or "package.module:function"
    filter: FilterConfig
    name: str | None = None  # the subscription's name (default: the handler's)
    priority: int = 0
    max_retries: NonNegative | None = None
    min_backoff_ms: NonNegative | None = None
    max_backoff_ms: NonNegative | None = None
    max_deliveries: Positive | None = None
    start: Literal["new", "earliest"] = "new"
    # A batch subscription: the handler receives a list of up to batch_size events.
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    batch_wait_ms: Annotated[int, Meta(ge=0, le=60_000)] | None = None


class RoutingConfig(_Section):
    """``events.routing``: rules that become subscriptions in workers."""

    rules: list[RuleConfig] = field(default_factory=list)


class Config(_Section):
    """The whole configuration of a chi-redis deployment (the ``events:`` section)."""

    namespace: str = "chi"
    bus: BusConfig = field(default_factory=BusConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    topics: dict[str, TopicConfig] = field(default_factory=dict)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    subscriptions_seen_days: Annotated[float, Meta(ge=0)] = 7.0

    @property
    def redis(self) -> RedisConfig:
        """``bus.redis`` (where earlier versions kept it)."""
        return self.bus.redis


class ConfigFile(_Section):
    """A configuration file: everything under ``events:``."""

    events: Config = field(default_factory=Config)
