"""The RabbitMQ bus without a broker: configuration, glob mapping, refused options."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner

from chi_redis import Event
from chi_redis.bridges import BusUnavailableError, NotSupportedError
from chi_redis.bridges.amqp import amqp_pattern, backoff_ms, retry_delays
from chi_redis.bridges.rabbitmq import RabbitMQEventBus
from chi_redis.cli import worker as cli_worker
from chi_redis.cli.main import cli as chi_cli
from chi_redis.config import bridge_from_config, bus_from_config, load_config
from chi_redis.errors import ConfigError
from chi_redis.events.names import glob_matches
from chi_redis.runtime.subscriptions import SubscriptionOptions

RABBIT = {"CHI_BUS_TYPE": "rabbitmq", "CHI_RABBITMQ_URL": "amqp://u:secret@mq:5672/%2F",
          "CHI_RABBITMQ_EXCHANGE": "shop-events", "CHI_NAMESPACE": "shop"}


def test_bus_type_rabbitmq_builds_the_rabbitmq_bus_and_redis_only_paths_refuse() -> None:
    config = load_config(None, RABBIT)
    bus = bridge_from_config(config)
    assert isinstance(bus, RabbitMQEventBus)
    assert (bus.namespace, bus.names.exchange, bus.url) == (
        "shop", "shop-events", "amqp://u:secret@mq:5672/%2F")
    assert "secret" not in repr(bus)
    with pytest.raises(ConfigError, match=r"not supported on bus\.type 'rabbitmq'"):
        bus_from_config(config)


@pytest.mark.parametrize(("env", "path", "match"), [
    ({"CHI_RABBITMQ_URL": "http://mq"}, "bus.rabbitmq.url", "amqp://"),
    ({"CHI_RABBITMQ_EXCHANGE": "bad\nname"}, "bus.rabbitmq.exchange", "printable"),
])
def test_bad_rabbitmq_settings_are_one_line_errors(env: dict[str, str], path: str,
                                                   match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, {**RABBIT, **env})
    assert path in str(info.value)


def test_routing_rules_and_the_archiver_are_refused_on_rabbitmq(tmp_path: Any) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("events:\n  bus: {type: rabbitmq}\n  routing:\n    rules:\n"
                    "      - {handler: h, filter: {type: all}}\n")
    with pytest.raises(ConfigError, match=r"routing\.rules are not supported"):
        load_config(file, {})


@pytest.mark.parametrize(("glob", "key"), [
    ("user.created", "user.created"), ("user.*", "user.*"), ("user.**", "user.#"),
    ("*.created", "*.created"), ("**", "#"), ("**.failed", "#.failed"),
])
def test_type_globs_map_to_amqp_binding_keys(glob: str, key: str) -> None:
    assert amqp_pattern(glob) == key


def test_amqp_keys_match_what_the_globs_match() -> None:
    # RabbitMQ's topic matching, written out: * one word, # zero or more.
    def amqp(key: str, rk: str) -> bool:
        def match(p: list[str], w: list[str]) -> bool:
            if not p:
                return not w
            if p[0] == "#":
                return any(match(p[1:], w[i:]) for i in range(len(w) + 1))
            return bool(w) and (p[0] in ("*", w[0])) and match(p[1:], w[1:])
        return match(key.split("."), rk.split("."))

    types = ["user", "user.created", "user.profile.updated", "order.created", "a.b.failed"]
    for glob in ["user.*", "user.**", "*.created", "**", "**.failed", "user.*.updated"]:
        for t in types:
            assert amqp(amqp_pattern(glob), t) == glob_matches(glob, t), (glob, t)


def test_retry_delays_double_up_to_the_cap() -> None:
    o = SubscriptionOptions(max_retries=6, min_backoff_ms=100, max_backoff_ms=1000)
    assert [backoff_ms(o, n) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    assert retry_delays(o) == [100, 200, 400, 800, 1000]


@pytest.mark.parametrize(("options", "match"), [
    ({"priority": 5}, "priority"),
    ({"start": "earliest"}, "start='earliest'"),
    ({"start": datetime(2026, 1, 1, tzinfo=UTC)}, "start=2026-01-01"),
    ({"dedupe": True}, "dedupe"),
    ({"batch_size": 10}, "batch_size"),
    ({"time_limit_ms": 100}, "time_limit_ms"),
])
def test_options_this_bus_cannot_honour_are_refused(options: dict[str, Any], match: str) -> None:
    bus = RabbitMQEventBus(namespace="t")
    with pytest.raises(NotSupportedError, match=match):
        bus.subscribe("s", types=["a.b"], **options)


def test_idempotency_keys_are_refused_before_anything_is_sent() -> None:
    bus = RabbitMQEventBus("amqp://guest:guest@127.0.0.1:1/%2F", namespace="t")
    with pytest.raises(NotSupportedError, match="idempotency_key"):
        bus.publish(Event(type="a.b"), idempotency_key="k")


def test_an_unreachable_broker_is_one_error_without_the_password() -> None:
    bus = RabbitMQEventBus("amqp://guest:hunter2@127.0.0.1:1/%2F", namespace="t")
    with pytest.raises(BusUnavailableError, match="cannot reach RabbitMQ") as info:
        bus.publish(Event(type="a.b"))
    assert "hunter2" not in str(info.value)


def test_chi_redis_worker_on_rabbitmq_execs_the_bridge_runner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(cli_worker, "execute", lambda argv, env: calls.append((argv, env)))
    config = tmp_path / "c.yaml"
    config.write_text("events:\n  namespace: shop\n  bus: {type: rabbitmq, worker_count: 3}\n")
    runner = CliRunner(env={"CHI_REDIS_URL": None, "CHI_NAMESPACE": None, "CHI_CONFIG": None})
    result = runner.invoke(chi_cli, ["--config", str(config), "worker", "app.handlers"])
    assert result.exit_code == 0, result.output
    [(argv, env)] = calls
    assert argv == [sys.executable, "-m", "chi_redis.bridges.run", "app.handlers",
                    "--threads", "3"]
    assert (env["CHI_CONFIG"], env["CHI_NAMESPACE"]) == (str(config), "shop")
    refused = runner.invoke(chi_cli, ["--config", str(config), "worker", "app.handlers",
                                      "--processes", "2"])
    assert refused.exit_code == 1 and "--processes is not supported" in refused.output
