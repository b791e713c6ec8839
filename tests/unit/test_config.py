"""The configuration file: the seed's ``events:`` schema, its errors, the earlier layout,
precedence, and docs/configuration.md covering every key."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import msgspec
import pytest

from chi_redis.config import (
    Config,
    ConfigFile,
    broker_options_from_config,
    bus_from_config,
    load_config,
    parse_size,
    rule_subscription_name,
)
from chi_redis.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

#: The seed's example (its 配置示例 section), verbatim but for its comments.
SEED = """\
events:
  bus:
    type: "memory" # memory, redis, kafka, rabbitmq
    buffer_size: 10000
    worker_count: 10
    redis:
      address: "localhost:6379"
      password: ""
      db: 0
    kafka:
      brokers:
        - "localhost:9092"
      consumer_group: "chi-events"
    rabbitmq:
      url: "amqp://guest:guest@localhost:5672/"
  store:
    enabled: true
    type: "database" # memory, database, file
    database:
      driver: "postgres"
      dsn: "postgres://user:pass@localhost/events?sslmode=disable"
      table_name: "events"
    file:
      directory: "/var/log/events"
      max_file_size: "100MB"
      max_files: 10
  replay:
    enabled: true
    batch_size: 100
    concurrent_workers: 5
  monitoring:
    metrics_enabled: true
    tracing_enabled: true
    health_check_enabled: true
  routing:
    rules:
      - priority: 100
        filter:
          type: "topic"
          values: ["security"]
        handler: "security_handler"
      - priority: 50
        filter:
          type: "pattern"
          values: ["user.*", "order.*"]
        handler: "business_handler"
      - priority: 1
        filter:
          type: "all"
        handler: "log_handler"
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def seed_adapted() -> str:
    """The seed's file with the one change it needs: its store is not built yet."""
    return SEED.replace('type: "database"', 'type: "memory"')


def test_the_seed_file_as_given_loads_with_its_database_store(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, SEED))
    assert (c.store.enabled, c.store.type) == (True, "database")
    assert c.store.database.table_name == "events"
    assert c.store.database.dsn.startswith("postgres://user:pass@")
    bad = SEED.replace('driver: "postgres"', 'driver: "mysql"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, bad))
    message = str(info.value)
    assert "not available" in message and "at `$.events.store.database.driver`" in message
    assert "\n" not in message


def test_the_seed_file_with_its_store_adapted_loads_every_section(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, seed_adapted()))
    assert c.bus.type == "memory"
    assert (c.bus.buffer_size, c.bus.worker_count) == (10_000, 10)
    assert c.bus.redis.effective_url() == "redis://localhost:6379/0"
    assert c.bus.kafka.brokers == ["localhost:9092"]
    assert c.store.file.max_file_size == "100MB" and parse_size("100MB") == 100 << 20
    assert (c.replay.batch_size, c.replay.concurrent_workers) == (100, 5)
    assert c.monitoring.tracing_enabled and c.monitoring.health_check_enabled
    assert [(r.priority, r.filter.type, rule_subscription_name(r)) for r in c.routing.rules] == [
        (100, "topic", "security_handler"), (50, "pattern", "business_handler"),
        (1, "all", "log_handler"),
    ]
    # store.enabled: false is the other way to load it
    off = SEED.replace("enabled: true\n    type", "enabled: false\n    type")
    assert not load_config(write(tmp_path, off)).store.enabled


def test_memory_bus_needs_the_embedded_bus(tmp_path: Path) -> None:
    from chi_redis.publish.bus import EventBus

    c = load_config(write(tmp_path, seed_adapted()))
    if getattr(EventBus, "embedded", None) is None:
        with pytest.raises(ConfigError, match=r"bus\.type: memory needs the embedded bus"):
            bus_from_config(c)
    else:  # pragma: no cover - once the embedded bus is merged
        bus_from_config(c).close()


# (file text, expected path in the message, a word of the message)
MALFORMED = [
    ("events:\n  bus:\n    redis:\n      adress: x\n", "$.events.bus.redis", "adress"),
    ("events:\n  nmespace: x\n", "$.events", "nmespace"),
    ("events:\n  routing:\n    rules:\n      - handler: h\n"
     "        filter: {type: all, valuez: []}\n",
     "$.events.routing.rules[0].filter", "valuez"),
    ("events: {}\nextra: 1\n", "$", "extra"),
    ("events:\n  bus:\n    buffer_size: lots\n", "$.events.bus.buffer_size", "int"),
    ("events:\n  bus:\n    type: zeromq\n", "$.events.bus.type", "zeromq"),
    ("events:\n  retention:\n    default:\n      max_age: 7 days\n",
     "$.events.retention.default.max_age", "duration"),
    ("events:\n  store:\n    file:\n      max_file_size: 100XB\n",
     "$.events.store.file.max_file_size", "100XB"),
    ("events:\n  bus:\n    worker_count: -1\n", "$.events.bus.worker_count", ">= 1"),
    ("events:\n  replay:\n    batch_size: 0\n", "$.events.replay.batch_size", ">= 1"),
    ("events:\n  routing:\n    rules:\n      - priority: 1\n        filter: {type: all}\n",
     "$.events.routing.rules[0]", "handler"),
    ("events:\n  routing:\n    rules:\n      - handler: h\n        filter: {type: regex}\n",
     "$.events.routing.rules[0].filter.type", "regex"),
    ("events:\n  routing:\n    rules:\n      - handler: h\n"
     "        filter: {type: metadata, values: [eu]}\n",
     "$.events.routing.rules[0].filter.key", "key"),
    ("events:\n  routing:\n    rules:\n      - handler: h\n        filter: {type: topic}\n",
     "$.events.routing.rules[0].filter.values", "values"),
    ("events:\n  routing:\n    rules:\n      - handler: h\n        filter: {type: all}\n"
     "        batch_size: 10001\n", "$.events.routing.rules[0].batch_size", "<= 10000"),
    ("events:\n  routing:\n    rules:\n      - handler: h\n        filter: {type: all}\n"
     "        batch_wait_ms: 5\n", "$.events.routing.rules[0].batch_wait_ms", "batch_size"),
    ("events:\n  routing:\n    rules:\n      - handler: h\n"
     "        filter: {type: pattern, values: ['us*r.x']}\n",
     "$.events.routing.rules[0].filter.values[0]", "us*r.x"),
    ("events:\n  routing:\n    rules:\n      - {handler: h, filter: {type: all}}\n"
     "      - {handler: h, filter: {type: all}}\n", "$.events.routing.rules[1]", "name"),
    ("events:\n  bus:\n    redis:\n      url: redis://h:1/0\n      address: h:2\n",
     "$.events.bus.redis", "exclude"),
    ("events:\n  bus:\n    type: rabbitmq\n    rabbitmq: {url: 'http://h'}\n",
     "$.events.bus.rabbitmq.url", "amqp://"),
    ("events:\n  bus:\n    type: kafka\n", "$.events.bus.kafka.brokers", "at least one broker"),
    ("events:\n  bus:\n    type: kafka\n    kafka: {brokers: [k]}\n",
     "$.events.bus.kafka.brokers[0]", "invalid broker"),
    ("events:\n  store:\n    type: file\n", "$.events.store.file.directory", "directory"),
    ("events:\n  store:\n    type: database\n    database: {table_name: 'a;b'}\n",
     "$.events.store.database.table_name", "invalid table name"),
    ("events:\n  store:\n    archive: {enabled: true}\n", "$.events.store.archive.enabled",
     "persistent store"),
    ("events:\n  store:\n    archive: {types: ['us*']}\n", "$.events.store.archive.types[0]",
     "us*"),
    ("events:\n  bus: [1, 2]\n", "$.events.bus", "object"),
    ("events:\n  monitoring:\n    metrics_port: 70000\n", "$.events.monitoring.metrics_port",
     "65535"),
    ("events:\n  namespace: Chi Prod\n", "$.events.namespace", "namespace"),
    ("events: [unclosed\n", "", "not valid YAML"),
    ("- just\n- a list\n", "$", "mapping"),
    ("bus:\n  buffer_size: 10\n", "$", "events:"),  # the seed's keys without its root
]


@pytest.mark.parametrize(("text", "path", "word"), MALFORMED,
                         ids=[f"{i}-{m[2]}" for i, m in enumerate(MALFORMED)])
def test_a_malformed_file_is_one_line_naming_its_path(
    tmp_path: Path, text: str, path: str, word: str
) -> None:
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    message = str(info.value)
    assert "\n" not in message
    assert str(file) in message
    if path:
        assert f"at `{path}`" in message, message
    assert word.lower() in message.lower(), message


def test_an_empty_file_and_no_file_give_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "events:\n")) == Config()
    assert load_config() == Config()
    assert Config().redis.effective_url() == "redis://127.0.0.1:6379/0"
    # Nothing set skips msgspec's conversion: the defaults are exactly what it gives.
    assert msgspec.convert({"events": {}}, ConfigFile).events == Config()
    assert msgspec.to_builtins(Config()) == msgspec.to_builtins(
        msgspec.convert({"events": {}}, ConfigFile).events)


def test_a_file_in_the_earlier_layout_loads_with_a_one_line_notice(tmp_path: Path) -> None:
    old = ("namespace: legacy\nredis:\n  url: redis://h:7/3\nbus:\n  encoding: json\n"
           "worker:\n  lease_ms: 1500\n  metrics_port: 9191\nretention:\n  default:\n"
           "    max_age: 7d\nsubscriptions_seen_days: 2\n")
    remarks: list[str] = []
    c = load_config(write(tmp_path, old), notice=remarks.append)
    assert (c.namespace, c.redis.effective_url(), c.bus.encoding) == (
        "legacy", "redis://h:7/3", "json")
    assert (c.worker.lease_ms, c.monitoring.metrics_port) == (1500, 9191)
    assert (c.retention.default.max_age, c.subscriptions_seen_days) == ("7d", 2)
    assert len(remarks) == 1 and "events:" in remarks[0] and "\n" not in remarks[0]


def test_the_earlier_layout_keeps_its_own_error_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"urll.*at `\$.redis`"):
        load_config(write(tmp_path, "redis:\n  urll: x\n"), notice=lambda m: None)


def test_the_earlier_layout_notice_is_logged_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "chi_redis.config"):
        load_config(write(tmp_path, "namespace: x\n"))
    assert "events:" in caplog.text


@pytest.mark.parametrize("name", ["dev", "docker", "test"])
def test_the_shipped_config_files_use_the_events_layout(name: str) -> None:
    remarks: list[str] = []
    path = ROOT / "config" / f"{name}.yaml"
    config = load_config(path, notice=remarks.append)
    assert remarks == []
    assert "events" in msgspec.convert(__import__("yaml").safe_load(path.read_text()), dict)
    assert config.bus.type == "redis"


def test_the_shipped_files_keep_what_they_configured() -> None:
    docker = load_config(ROOT / "config" / "docker.yaml")
    assert docker.redis.effective_url() == "redis://redis:6379/0"
    assert docker.monitoring.metrics_port == 9191
    assert docker.retention.default.max_len == 1_000_000
    test = load_config(ROOT / "config" / "test.yaml")
    assert (test.namespace, test.worker.lease_ms, test.retention.interval_s) == (
        "chitest", 1500, 1)
    dev = load_config(ROOT / "config" / "dev.yaml")
    assert dev.retention.topics["security"].max_age == "30d"


def test_environment_beats_file_beats_default(tmp_path: Path) -> None:
    file = write(tmp_path, "events:\n  namespace: fromfile\n  bus:\n    redis:\n"
                 "      address: filehost:1\n      db: 2\n  worker:\n    lease_ms: 2000\n")
    assert load_config().worker.lease_ms == 60_000  # default
    c = load_config(file)
    assert (c.namespace, c.redis.effective_url(), c.worker.lease_ms) == (
        "fromfile", "redis://filehost:1/2", 2000)
    env = {"CHI_NAMESPACE": "fromenv", "CHI_REDIS_URL": "redis://envhost:3/4",
           "CHI_LEASE_MS": "3000", "CHI_REDIS_PASSWORD": "s3cret", "CHI_WORKER_COUNT": "3"}
    c = load_config(file, env)
    assert (c.namespace, c.redis.effective_url(), c.worker.lease_ms) == (
        "fromenv", "redis://envhost:3/4", 3000)
    assert c.bus.worker_count == 3
    assert c.redis.client_options(c.redis.effective_url())["password"] == "s3cret"
    # CHI_CONFIG names the file when no path is given
    assert load_config(None, {"CHI_CONFIG": str(file)}).namespace == "fromfile"


def test_environment_values_pass_the_same_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CHI_LEASE_MS must be an integer"):
        load_config(None, {"CHI_LEASE_MS": "soon"})
    with pytest.raises(ConfigError, match="CHI_INLINE_WHEN_IDLE must be true or false"):
        load_config(None, {"CHI_INLINE_WHEN_IDLE": "maybe"})
    assert load_config(None, {}).worker.inline_when_idle is True
    assert load_config(None, {"CHI_INLINE_WHEN_IDLE": "false"}).worker.inline_when_idle is False
    assert broker_options_from_config(
        load_config(None, {"CHI_INLINE_WHEN_IDLE": "off"})).inline_when_idle is False
    with pytest.raises(ConfigError, match=r">= 1 - at `\$.events.worker.lease_ms`"):
        load_config(None, {"CHI_LEASE_MS": "0"})
    with pytest.raises(ConfigError, match=r"bus\.rabbitmq\.url must start with amqp://"):
        load_config(None, {"CHI_BUS_TYPE": "rabbitmq", "CHI_RABBITMQ_URL": "http://h"})
    with pytest.raises(ConfigError, match="kafka needs at least one broker"):
        load_config(None, {"CHI_BUS_TYPE": "kafka"})


def test_redis_address_password_db_and_tls_build_the_client_options() -> None:
    raw = {"events": {"bus": {"redis": {
        "address": "cache:6380", "db": 3, "username": "app", "password": "pw", "tls": True,
        "tls_ca_file": "/ca.pem", "tls_verify": False}}}}
    r = msgspec.convert(raw, ConfigFile).events.redis
    url = r.effective_url()
    assert url == "rediss://app@cache:6380/3"  # the password never sits in the URL
    opts = r.client_options(url)
    assert opts["password"] == "pw"
    assert (opts["ssl_ca_certs"], opts["ssl_cert_reqs"]) == ("/ca.pem", "none")
    assert "ssl_ca_certs" not in r.client_options("redis://plain:1/0")


def test_bus_from_config_connects_where_the_file_says(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "events:\n  namespace: there\n  bus:\n    encoding: json\n"
                              "    redis:\n      address: 10.0.0.9:6390\n      db: 5\n"))
    bus = bus_from_config(c)
    kw = bus.client.connection_pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["db"]) == ("10.0.0.9", 6390, 5)
    assert (bus.namespace, bus.codec.encoding) == ("there", "json")
    flagged = bus_from_config(c, url="redis://other:1/0", namespace="flag")
    assert flagged.client.connection_pool.connection_kwargs["host"] == "other"
    assert flagged.namespace == "flag"


def test_buffer_size_is_the_buffered_publishers_capacity() -> None:
    import fakeredis

    from chi_redis import AsyncEventBus
    from chi_redis.config import publisher_from_config

    c = load_config(None, {"CHI_BUFFER_SIZE": "64"})
    bus = AsyncEventBus(fakeredis.FakeAsyncRedis(version=(7, 0)), namespace="x")
    assert publisher_from_config(c, bus).max_buffer == 64


def _schema_fields() -> list[str]:
    """Every key of the schema as a path under ``events``: ``routing.rules[].handler``,
    ``retention.topics.<topic>.max_age``."""
    out: list[str] = []

    def struct_in(t: object) -> tuple[type | None, str]:
        if isinstance(t, type) and issubclass(t, msgspec.Struct):
            return t, ""
        origin, args = getattr(t, "__origin__", None), getattr(t, "__args__", ())
        if origin is list and args:
            inner, _ = struct_in(args[0])
            return inner, "[]"
        if origin is dict and args:
            inner, _ = struct_in(args[1])
            return inner, ".<topic>"
        for a in args:
            inner, suffix = struct_in(a)
            if inner is not None:
                return inner, suffix
        return None, ""

    def walk(cls: type, prefix: str) -> None:
        for f in msgspec.structs.fields(cls):
            out.append(prefix + f.name)
            inner, suffix = struct_in(f.type)
            if inner is not None:
                walk(inner, prefix + f.name + suffix + ".")

    walk(Config, "")
    return out


def test_docs_configuration_lists_every_key_and_environment_variable() -> None:
    from chi_redis.config import ENV_VARS

    doc = (ROOT / "docs" / "configuration.md").read_text()
    keys = set(re.findall(r"^\| `([a-z_.<>\[\]]+)`", doc, re.MULTILINE))
    fields = _schema_fields()
    assert len(fields) > 60
    missing = [f for f in fields if f not in keys]
    assert missing == [], f"docs/configuration.md misses {missing}"
    extra = sorted(k for k in keys if k not in fields and not k.startswith("CHI_"))
    assert extra == [], f"docs/configuration.md documents keys the schema lacks: {extra}"
    for var in [*ENV_VARS, "CHI_CONFIG"]:
        assert f"`{var}`" in doc, var
