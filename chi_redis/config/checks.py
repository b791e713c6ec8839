"""Checks msgspec cannot express, each failing with one line that names its path.

Sizes (``100MB``), durations (``7d``), keys that exclude each other, parts that a later
version builds ("not available yet"), and routing rules (handler references, filters).
"""

from __future__ import annotations

import re

from ..errors import ConfigError, InvalidNameError, ValidationError
from ..events.names import validate_glob, validate_name
from .schema import Config, RuleConfig

__all__ = ["check", "parse_duration_ms", "parse_size", "rule_subscription_name"]

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib|tb|tib)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_HANDLER_NAME = re.compile(r"[A-Za-z_][\w.-]*")


def parse_duration_ms(text: str) -> int:
    """``30s``, ``15m``, ``2h``, ``7d``, ``500ms`` → milliseconds."""
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
    t = text.strip().lower()
    for unit in ("ms", "s", "m", "h", "d", "w"):
        if t.endswith(unit) and t[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * units[unit])
    raise ConfigError(f"invalid duration {text!r}: use e.g. 30s, 15m, 2h, 7d")


def parse_size(text: str) -> int:
    """``512KB``, ``100MB``, ``1GB`` (multiples of 1024; ``MiB`` is the same) → bytes."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ConfigError(f"invalid size {text!r}: use e.g. 512KB, 100MB, 1GB")
    unit = (m.group(2) or "b").lower().replace("i", "")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def _at(path: str, message: str) -> ConfigError:
    return ConfigError(f"{message} - at `$.events.{path}`")


def check(config: Config) -> None:
    """Raise :class:`ConfigError` (one line, with the path) for what the schema lets pass."""
    _check_redis(config)
    _check_parts(config)
    policies = [("retention.default", config.retention.default)]
    policies += [(f"retention.topics.{t}", p) for t, p in config.retention.topics.items()]
    for path, policy in policies:
        if policy.max_age is not None:
            try:
                parse_duration_ms(policy.max_age)
            except ConfigError as exc:
                raise _at(f"{path}.max_age", str(exc)) from None
    for topic in config.retention.topics:
        _name(topic, "topic", "retention.topics")
    for topic, tc in config.topics.items():
        _name(topic, "topic", "topics")
        source, _, key = tc.partition_key.partition(".")
        if source not in ("metadata", "data") or not key:
            raise _at(f"topics.{topic}.partition_key", "must be 'metadata.<key>' or"
                      f" 'data.<field>', got {tc.partition_key!r}")
    if config.outbox.keep is not None:
        try:
            parse_duration_ms(config.outbox.keep)
        except ConfigError as exc:
            raise _at("outbox.keep", str(exc)) from None
    _name(config.namespace, "namespace", "namespace")
    try:
        parse_size(config.store.file.max_file_size)
    except ConfigError as exc:
        raise _at("store.file.max_file_size", str(exc)) from None
    names: dict[str, int] = {}
    for i, rule in enumerate(config.routing.rules):
        _check_rule(rule, f"routing.rules[{i}]")
        sub = rule_subscription_name(rule)
        if sub in names:
            raise _at(f"routing.rules[{i}]", f"rules {names[sub]} and {i} both make subscription"
                      f" {sub!r}: give one of them a `name`")
        names[sub] = i


def _check_redis(config: Config) -> None:
    r = config.bus.redis
    if r.password and r.password_file:
        raise _at("bus.redis", "`password` and `password_file` exclude each other: give one"
                  " (CHI_REDIS_PASSWORD, CHI_REDIS_PASSWORD_FILE)")
    if r.url is not None:
        given = [k for k in ("address", "username") if getattr(r, k) is not None]
        given += ["db"] if r.db else []
        given += ["tls"] if r.tls else []
        if given:
            raise _at("bus.redis", f"`url` and `{given[0]}` exclude each other: give the whole"
                      " URL, or address/db/username/tls without it")
        if not r.url.startswith(("redis://", "rediss://", "unix://")):
            raise _at("bus.redis.url", f"invalid Redis URL {r.url!r}: use redis://host:port/db,"
                      " rediss://… or unix://…")
    elif r.address is not None and not re.fullmatch(r"[^\s:/@]+:\d{1,5}|[^\s:/@]+", r.address):
        raise _at("bus.redis.address", f"invalid address {r.address!r}: use host:port")


def _check_parts(config: Config) -> None:
    if config.bus.type == "kafka":
        _check_kafka(config)
    if config.bus.type == "rabbitmq":
        _check_rabbitmq(config)
    _check_store(config)


def _check_rabbitmq(config: Config) -> None:
    # Routing rules and the archiver are Dramatiq middleware of the Redis worker.
    if config.routing.rules:
        raise _at("routing.rules", "routing.rules are not supported on bus.type 'rabbitmq':"
                  " subscribe in the handler modules (docs/buses.md)")
    if config.store.archive.enabled:
        raise _at("store.archive.enabled", "the archiver is not supported on bus.type"
                  " 'rabbitmq': it reads the Redis streams (docs/buses.md)")
    r = config.bus.rabbitmq
    if not r.url.startswith(("amqp://", "amqps://")):
        raise _at("bus.rabbitmq.url", "bus.rabbitmq.url must start with amqp:// or amqps://")
    if not r.exchange or len(r.exchange) > 200 or not r.exchange.isprintable():
        raise _at("bus.rabbitmq.exchange", "bus.rabbitmq.exchange must be 1-200 printable"
                  " characters")


def _check_kafka(config: Config) -> None:
    k = config.bus.kafka
    if not k.brokers:
        raise _at("bus.kafka.brokers", "bus.type kafka needs at least one broker (host:port)")
    for i, b in enumerate(k.brokers):
        if not re.fullmatch(r"[^\s:/@,]+:\d{1,5}", b):
            raise _at(f"bus.kafka.brokers[{i}]", f"invalid broker {b!r}: use host:port")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", k.consumer_group):
        raise _at("bus.kafka.consumer_group", f"invalid consumer group {k.consumer_group!r}:"
                  " letters, digits, '.', '_', '-'")


def _check_store(config: Config) -> None:
    s = config.store
    for i, t in enumerate(s.archive.topics):
        _name(t, "topic", f"store.archive.topics[{i}]")
    for i, g in enumerate(s.archive.types):
        try:
            validate_glob(g, "type")
        except InvalidNameError as exc:
            raise _at(f"store.archive.types[{i}]", str(exc)) from None
    if s.archive.enabled and (not s.enabled or s.type == "memory"):
        raise _at("store.archive.enabled", "the archiver copies events into a persistent store:"
                  " set store.enabled: true and store.type: database or file")
    if not s.enabled:
        return
    if s.type == "database":
        if s.database.driver not in ("postgres", "postgresql"):
            raise _at("store.database.driver", f"driver {s.database.driver!r} is not available:"
                      " use 'postgres'")
        from ..store.postgres import validate_table_name  # no psycopg: that comes on use

        try:
            validate_table_name(s.database.table_name)
        except ValidationError as exc:
            raise _at("store.database.table_name", str(exc)) from None
    elif s.type == "file" and not s.file.directory:
        raise _at("store.file.directory", "store.type: file needs `directory`")


def _name(value: str, kind: str, path: str) -> None:
    try:
        validate_name(value, kind)
    except InvalidNameError as exc:
        raise _at(path, str(exc)) from None


def _check_rule(rule: RuleConfig, path: str) -> None:
    if not (_IMPORT_PATH.fullmatch(rule.handler) or _HANDLER_NAME.fullmatch(rule.handler)):
        raise _at(f"{path}.handler", f"invalid handler {rule.handler!r}: a name registered"
                  " with @bus.handler(...) or an import path package.module:function")
    if rule.name is not None:
        _name(rule.name, "subscription", f"{path}.name")
    else:
        try:
            validate_name(rule_subscription_name(rule), "subscription")
        except InvalidNameError:
            raise _at(f"{path}.handler", f"handler {rule.handler!r} is not a valid subscription"
                      " name (lowercase letters, digits, '.', '_', '-'): give the rule a `name`"
                      ) from None
    if rule.batch_wait_ms is not None and rule.batch_size is None:
        raise _at(f"{path}.batch_wait_ms", "`batch_wait_ms` needs `batch_size`")
    f, fpath = rule.filter, f"{path}.filter"
    if f.type == "all":
        if f.values or f.key is not None:
            raise _at(fpath, "filter type 'all' takes no `values` or `key`")
        return
    if not f.values:
        raise _at(f"{fpath}.values", f"filter type {f.type!r} needs `values`")
    if f.type == "metadata":
        if not f.key:
            raise _at(f"{fpath}.key", "filter type 'metadata' needs `key`")
        return
    if f.key is not None:
        raise _at(f"{fpath}.key", f"`key` is for metadata filters, not {f.type!r}")
    for j, v in enumerate(f.values):
        if not isinstance(v, str):
            raise _at(f"{fpath}.values[{j}]", f"Expected `str`, got {type(v).__name__}")
        try:
            if f.type == "pattern":
                validate_glob(v, "pattern")
            else:
                validate_name(v, f.type)
        except InvalidNameError as exc:
            raise _at(f"{fpath}.values[{j}]", str(exc)) from None


def rule_subscription_name(rule: RuleConfig) -> str:
    """The subscription a rule makes: its ``name``, else its handler's name (for an import
    path, the function's name)."""
    if rule.name:
        return rule.name
    return rule.handler.rpartition(":")[2] if ":" in rule.handler else rule.handler
