"""``bus.type: kafka`` in the configuration and the CLI, and the Kafka names (no broker)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.processes import clean_env

from chi_redis import ConfigError, Event, ValidationError
from chi_redis.bridges.kafka import (
    KafkaEventBus,
    KafkaUnsupportedError,
    dead_letter_topic,
    kafka_topic,
)
from chi_redis.cli import worker as worker_cmd
from chi_redis.cli.main import cli
from chi_redis.config import bus_from_config, load_config


def write(tmp_path: Path, bus: str) -> Path:
    path = tmp_path / "events.yaml"
    path.write_text("events:\n  namespace: shop\n  bus:\n" + bus)
    return path


KAFKA = "    type: kafka\n    kafka:\n      brokers: ['k1:9092', 'k2:9092']\n"


def test_kafka_is_accepted_and_builds_the_kafka_bus(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, KAFKA), {})
    bus = KafkaEventBus.from_config(config)
    assert bus.bootstrap == "k1:9092,k2:9092" and bus.namespace == "shop"
    assert bus.group_id("audit") == "chi-events.shop.audit"
    assert (bus.partitions, bus.replication_factor, bus.session_timeout_ms) == (3, 1, 45_000)
    with pytest.raises(ConfigError, match=r"not supported on bus\.type 'kafka'"):
        bus_from_config(config)  # the Redis-only commands say so


@pytest.mark.parametrize(("bus", "message"), [
    ("    type: kafka\n", "bus.kafka.brokers"),
    ("    type: kafka\n    kafka:\n      brokers: ['no-port']\n", "invalid broker"),
    ("    type: rabbitmq\n    rabbitmq:\n      url: http://h\n", "amqp://"),
])
def test_bad_kafka_settings_are_refused(tmp_path: Path, bus: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, bus), {})


def test_worker_command_runs_the_kafka_worker(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_execute(argv: list[str], env: dict[str, str]) -> None:
        calls.append(argv)

    monkeypatch.setattr(worker_cmd, "execute", fake_execute)
    env = clean_env(CHI_CONFIG=str(write(tmp_path, KAFKA)))
    out = CliRunner().invoke(cli, ["worker", "handlers.audit", "-t", "3"], env=env)
    assert out.exit_code == 0, out.output
    assert calls[0][1:] == ["-m", "chi_redis.bridges.kafka_serve", "handlers.audit",
                            "--threads", "3"]
    two = CliRunner().invoke(cli, ["worker", "handlers.audit", "-p", "2"], env=env)
    assert two.exit_code == 1 and "one process" in two.output and len(calls) == 1


def test_topic_names() -> None:
    assert kafka_topic("chi", "orders") == "chi.orders"
    assert dead_letter_topic("chi", "audit") == "chi._dlq.audit"
    with pytest.raises(ValidationError, match="longer than 249"):
        kafka_topic("n" * 128, "t" * 128)


@pytest.mark.parametrize("option", [
    {"batch_size": 10}, {"dedupe": True}, {"time_limit_ms": 100}, {"max_deliveries": 3},
    {"start": datetime(2026, 1, 1, tzinfo=UTC)},
])
def test_unsupported_subscription_options_are_refused(option: dict[str, Any]) -> None:
    bus = KafkaEventBus(["k:9092"])
    with pytest.raises(KafkaUnsupportedError, match="does not support"):
        bus.subscribe("s", types=["a.b"], **option)


def test_unknown_subscription_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_retry"):
        KafkaEventBus(["k:9092"]).subscribe("s", types=["a.b"], max_retry=3)


def test_publish_to_an_unreachable_broker_is_a_clear_error() -> None:
    from support.ports import free_port

    from chi_redis.bridges.kafka import KafkaError

    bus = KafkaEventBus([f"127.0.0.1:{free_port()}"], timeout_s=1.5)  # nothing listens
    with pytest.raises(KafkaError, match=r"127\.0\.0\.1:\d+"):
        bus.publish(Event(type="parcel.sent", data=1))
    with pytest.raises(KafkaError):
        bus.dead_letters("audit", timeout_s=1.5)


def test_priority_is_refused() -> None:
    """Each subscription has its own consumer group and threads: nothing to order."""
    bus = KafkaEventBus(["k:9092"])
    with pytest.raises(KafkaUnsupportedError, match="does not support priority"):
        bus.subscribe("urgent", types=["a.b"], priority=9)
    assert "urgent" not in bus.subscriptions
    bus.subscribe("normal", types=["a.b"], priority=0)(lambda e: None)  # the default


def test_chi_kafka_brokers_is_a_comma_separated_list() -> None:
    config = load_config(None, {"CHI_BUS_TYPE": "kafka",
                                "CHI_KAFKA_BROKERS": "k1:9092, k2:9092,"})
    assert config.bus.kafka.brokers == ["k1:9092", "k2:9092"]
    assert KafkaEventBus.from_config(config).bootstrap == "k1:9092,k2:9092"


def test_what_kafka_cannot_do_is_the_bridges_not_supported_error() -> None:
    from chi_redis.bridges import NotSupportedError

    with pytest.raises(NotSupportedError, match="Kafka has no per-message delay"):
        KafkaEventBus(["k:9092"]).publish_batch([], delay_ms=100)
